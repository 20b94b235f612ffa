"""The model's LM head as a log-prob head, and per-sequence log-probs of a batch through it.

``install_logprob_head`` swaps the model's LM head for a ``LogprobHead`` that owns the very same
parameters (so state dicts, checkpoints, weight tying and ZeRO-3 gathering are unchanged: DeepSpeed
gathers a module's parameters when that module is called). Called with targets it returns per-token
log-probs through ``spot_kernels`` (logits never formed); called without, it is the plain linear head,
so ``model(input_ids).logits`` and ``model.generate()`` keep working on the training model.

``batch_logps`` runs the model body once over a batch (sequences or pair trees, ``batching.py``),
keeps only the hidden states that predict completion tokens, scores them with the fused head and sums
their log-probs per sequence. The batch guarantees what the kernel's public entry would check (every
target a real token id, sequence indices in range), so it calls ``linear_logprobs_unchecked`` and
``segment_sum``: no host synchronisation on the hot path.

``LogprobModel`` is the module the trainer hands to DeepSpeed: its forward is ``batch_logps``, so
training calls ``engine(batch)`` and scoring calls ``engine.module(batch)``. Under ZeRO-3 that matters:
DeepSpeed gathers each submodule's parameters in hooks around the submodule's forward, resets its
gather schedule in a hook on the wrapped module's forward, and registers its backward bookkeeping on
the tensors the engine's forward returns (tensors in tuples, lists or dicts; ``BatchLogps`` is a
named tuple for that reason). Calling the body and the head from this forward puts all of it in
place; ``engine.module.model`` is the Hugging Face model itself (``save_pretrained``, ``generate``).
"""
from typing import NamedTuple

import torch
from torch import nn

from spot_kernels import linear_logprobs_unchecked, segment_sum

from .attention import model_inputs


class LogprobHead(nn.Module):
    def __init__(self, lm_head, backend="auto"):
        super().__init__()
        self.weight = lm_head.weight
        self.bias = lm_head.bias
        self.backend = backend

    def forward(self, hidden, targets=None, return_stats=False):
        """Logits ``[..., V]`` without targets; with targets ([N] real token ids, ``hidden`` [N, H]),
        per-token log-probs (a ``TokenLogprobs`` when ``return_stats``)."""
        if targets is None:
            return nn.functional.linear(hidden, self.weight, self.bias)
        return linear_logprobs_unchecked(hidden, self.weight, targets, self.bias, backend=self.backend,
                                         return_stats=return_stats)


def install_logprob_head(model, backend="auto"):
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the model's output embedding is a {type(head).__name__}, not nn.Linear")
    model.set_output_embeddings(LogprobHead(head, backend))
    return model


def model_body(model):
    """The transformer without its LM head (``model.model`` for Llama/Qwen-style models)."""
    return getattr(model, model.base_model_prefix)


class BatchLogps(NamedTuple):
    chosen: torch.Tensor            # [B] summed completion log-probs (fp32)
    rejected: object                # [B], or None for a batch without rejected answers
    token_logps: torch.Tensor       # [T] fp32, in the batch's token order (chosen sequences first)
    entropy: torch.Tensor           # [T] (no grad)
    target_is_argmax: torch.Tensor  # [T] bool


def batch_logps(model, batch):
    """Per-sequence and per-token log-probs of ``batch`` (a ``batching.Batch`` on the model's device).
    A shared token of a pair tree is scored once and added to both of its sequences' sums."""
    inputs = model_inputs(batch, model.config._attn_implementation)
    hidden = model_body(model)(**inputs, use_cache=False).last_hidden_state[:, :batch.input_ids.shape[1]]
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.token_positions)
    out = model.get_output_embeddings()(hidden, batch.targets, return_stats=True)
    sums = segment_sum(out.logp, batch.seq_index, batch.num_sequences)
    if batch.shares_prefix:
        sums = sums.index_add(0, batch.also_seq_index, out.logp.index_select(0, batch.also_token_index))
    rejected = sums[batch.num_pairs:] if batch.num_sequences > batch.num_pairs else None
    return BatchLogps(sums[:batch.num_pairs], rejected, out.logp, out.entropy, out.target_is_argmax)


class LogprobModel(nn.Module):
    """A causal LM with a ``LogprobHead`` (``install_logprob_head``) whose forward is ``batch_logps``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return batch_logps(self.model, batch)
