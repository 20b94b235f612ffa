"""Sequence log-probs of a batch under a causal LM, through ``spot_kernels`` instead of logits.

``install_logprob_head`` swaps the model's LM head for a ``LogprobHead`` that owns the very same
parameters (so state dicts, checkpoints, weight tying and ZeRO-3 gathering are unchanged: DeepSpeed
gathers a module's parameters when that module is called) but whose forward takes hidden states and
targets and returns per-token log-probs. ``batch_logps`` runs the model body once over a batch,
keeps only the hidden states that predict completion tokens, and sums their log-probs per sequence
(the per-token log-probs are returned as well, for token-level objectives and metrics).
"""
from dataclasses import dataclass

import torch
from torch import nn

from spot_kernels import linear_logprobs, sequence_logps


class LogprobHead(nn.Module):
    def __init__(self, lm_head, backend="auto"):
        super().__init__()
        self.weight = lm_head.weight
        self.bias = lm_head.bias
        self.backend = backend

    def forward(self, hidden, targets, return_stats=False):
        return linear_logprobs(hidden, self.weight, targets, self.bias, backend=self.backend, return_stats=return_stats)


def install_logprob_head(model, backend="auto"):
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the model's output embedding is a {type(head).__name__}, not nn.Linear")
    model.set_output_embeddings(LogprobHead(head, backend))
    return model


def model_body(model):
    """The transformer without its LM head (``model.model`` for Llama/Qwen-style models)."""
    return getattr(model, model.base_model_prefix)


@dataclass
class BatchLogps:
    chosen: torch.Tensor            # [B] summed completion log-probs (fp32)
    rejected: object                # [B], or None for a batch without rejected answers
    token_logps: torch.Tensor       # [T]
    entropy: torch.Tensor           # [T] (no grad)
    target_is_argmax: torch.Tensor  # [T] bool


def batch_logps(model, batch):
    """Per-sequence log-probs of ``batch`` (a ``data.Batch`` on the model's device)."""
    hidden = model_body(model)(
        input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
        use_cache=False,
    ).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.token_positions)
    out = model.get_output_embeddings()(hidden, batch.targets, return_stats=True)
    sums = sequence_logps(out.logp, batch.seq_index, batch.num_sequences)
    rejected = sums[batch.num_pairs:] if batch.num_sequences > batch.num_pairs else None
    return BatchLogps(sums[:batch.num_pairs], rejected, out.logp, out.entropy, out.target_is_argmax)
