"""``causal_lm_logprobs``: per-token log-probs of labels under any Hugging Face causal LM, without logits.

    out = causal_lm_logprobs(model, input_ids, labels, attention_mask=mask, return_stats=True)
    out.logp            # [B, L-1] fp32: log p(labels[:, i+1] | tokens <= i); 0 where not scored
    out.sequence_logp   # [S] per-sequence sums (S = B, or the packed sequences in row-major order)

The algorithm, for a model ``m`` (a ``transformers`` causal LM, or a PEFT model around one):
1. the body ``m.base_model`` (PEFT's adapted layers included) gives hidden states h [B, L, H];
2. labels are shifted, position i predicting ``labels[:, i+1]`` (``shift_labels=False``: the labels
   are already aligned with the positions, as under context parallelism);
3. a position is scored where its target is not ``ignore_index`` and, for packed rows
   (``position_ids`` given: each 0 starts a new sequence), where the target does not start a new
   sequence (the last token of one sequence does not predict the first of the next);
4. the scored hidden states (the others are dropped before any matmul) go through ``linear_logprobs``
   with the model's own head weight and bias: the [N, V] logits are never formed. A sampling
   temperature T is exact without them: z / T = (h / T) W^T + b / T;
5. the log-probs are scattered back to [B, L-1] (zeros elsewhere) and, on request, summed per sequence.

The head is run as the forward of the head module itself (its forward routed to the fused kernel for
the one call), so whatever hooks the module carries run around it: DeepSpeed ZeRO-3 gathers the
partitioned head weight before the forward and again before the backward, as for the model's own
forward. Under ZeRO-3 call this from within the forward of the module the engine wraps (as
``spot_kernels.trl_integration`` does), so that DeepSpeed's per-forward bookkeeping runs. A PEFT
adapter on the head itself is refused: the fused head reads ``weight`` and ``bias`` directly.

Nothing here imports transformers, peft or deepspeed: the model brings them.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn

from .linear_logprobs import autocast_off, linear_logprobs
from .losses import segment_sum


class CausalLMLogprobs(NamedTuple):
    """Per-position outputs ([B, L-1], or [B, L] with ``shift_labels=False``), 0 / False where a
    position is not scored. ``logp`` fp32, differentiable; the statistics (None unless
    ``return_stats``) have no gradient: ``entropy`` of the (temperature-scaled) next-token
    distribution, ``target_is_argmax`` (the target is the first maximum: ``argmax``), ``mean_logit`` (the mean over the vocabulary of
    the scaled logits, ``(h / T) . mean_v W_v + mean(b) / T``, one matrix-vector product).
    ``mask``: the scored positions. ``sequence_logp``: [S] sums, None unless ``sequence_sums``."""
    logp: torch.Tensor
    entropy: Optional[torch.Tensor]
    target_is_argmax: Optional[torch.Tensor]
    mean_logit: Optional[torch.Tensor]
    mask: torch.Tensor
    sequence_logp: Optional[torch.Tensor]


def causal_lm_logprobs(model, input_ids, labels, attention_mask=None, position_ids=None, *, temperature=1.0,
                       ignore_index=-100, shift_labels=True, return_stats=False, sequence_sums=False,
                       backend="auto", **model_kwargs):
    """Per-token log-probs of ``labels`` [B, L] under ``model`` (see the module docstring). Positions
    not to score (prompt, padding) carry ``ignore_index`` in ``labels``.

    ``model_kwargs`` go to the model body as they are (e.g. ``inputs_embeds``); ``use_cache`` is off.
    ``backend`` is ``linear_logprobs``'s (``auto``: Triton on CUDA, chunked PyTorch elsewhere)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    if labels.dim() != 2:
        raise ValueError(f"labels must be [batch, length]; got shape {tuple(labels.shape)}")
    tokens = input_ids if input_ids is not None else model_kwargs.get("inputs_embeds")
    if tokens is not None and labels.shape != tokens.shape[:2]:
        name = "input_ids" if input_ids is not None else "inputs_embeds"
        raise ValueError(f"labels must have the batch and length of {name}: labels {tuple(labels.shape)} vs "
                         f"{name} {tuple(tokens.shape)}")
    transformer, head = body_and_head(model)
    hidden = transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **{**model_kwargs, "use_cache": False}).last_hidden_state
    targets = labels
    if shift_labels:
        hidden, targets = hidden[:, :-1], labels[:, 1:]
    mask = targets != ignore_index
    sequence_index = None
    if position_ids is not None:
        starts = sequence_starts(position_ids)
        if shift_labels:
            mask = mask & ~starts[:, 1:]
        sequence_index = starts.reshape(-1).cumsum(0).reshape(starts.shape)[:, :mask.shape[1]] - 1
    scores = _through_module(head, _fused_head, hidden[mask], targets[mask], 1.0 / temperature, return_stats, backend)
    logp = _scatter(scores[0], mask)
    entropy, target_is_argmax, mean_logit = (None, None, None) if not return_stats else (
        _scatter(scores[1], mask), _scatter(scores[2], mask), _scatter(scores[3], mask))
    sums = None
    if sequence_sums:
        if sequence_index is None:
            sequence_index = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(mask.shape)
        num_sequences = mask.shape[0] if position_ids is None else int(starts.sum())
        sums = segment_sum(logp.reshape(-1), sequence_index.reshape(-1), num_sequences)
    return CausalLMLogprobs(logp, entropy, target_is_argmax, mean_logit, mask, sums)


def body_and_head(model):
    """The body (``base_model``) and the output-embedding module of ``model``, a ``transformers``
    causal LM or a PEFT model around one; a head that is not a plain ``nn.Linear`` is refused."""
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    transformer = getattr(hf_model, "base_model", None)
    if transformer is None or transformer is hf_model:
        raise TypeError(f"{type(hf_model).__name__} has no separate body (base_model); expected a causal LM "
                        "with a body and an LM head, such as LlamaForCausalLM or Qwen3ForCausalLM")
    head = hf_model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the LM head of {type(hf_model).__name__} is a {type(head).__name__}, not a plain "
                        "nn.Linear (a PEFT adapter on the head is not supported: the fused head reads its weight "
                        "directly; leave 'lm_head' out of the adapter's target modules)")
    return transformer, head


def sequence_starts(position_ids):
    """[B, L] bool: where a packed sequence starts (position id 0). Every row must start one."""
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be [batch, length]; got shape {tuple(position_ids.shape)}")
    starts = position_ids == 0
    if not bool(starts[:, 0].all()):
        row = int((~starts[:, 0]).nonzero()[0, 0])
        raise ValueError(f"position_ids[{row}, 0] = {int(position_ids[row, 0])}: each row of packed sequences "
                         "must start a sequence (position 0)")
    return starts


def _fused_head(head, hidden, targets, scale, return_stats, backend):
    """The forward routed into ``head`` for one call: per-token scores of the kept positions, in the
    head's precision whether or not the caller runs under autocast."""
    with autocast_off(hidden.device):
        return _scores(head.weight, head.bias, hidden, targets, scale, return_stats, backend)


def _scores(weight, bias, hidden, targets, scale, return_stats, backend):
    hidden = hidden.to(weight.dtype)
    if scale != 1.0:
        hidden, bias = hidden * scale, (None if bias is None else bias * scale)
    if hidden.shape[0] == 0:  # nothing scored: a zero that stays connected to the graph
        zero = hidden.sum(1, dtype=torch.float32) * 0
        return zero, zero.detach(), zero.detach().bool(), zero.detach()
    out = linear_logprobs(hidden, weight, targets, bias, backend=backend, return_stats=return_stats)
    if not return_stats:
        return out, None, None, None
    with torch.no_grad():
        dtype = out.logp.dtype  # fp32, or float64 for float64 inputs
        mean_logit = hidden.to(dtype) @ weight.mean(0, dtype=dtype)
        if bias is not None:
            mean_logit += bias.mean(dtype=dtype)
    return out.logp, out.entropy, out.target_is_argmax, mean_logit


def _through_module(module, function, *args):
    """``function(module, *args)`` called as ``module``'s forward, so that the module's hooks run around it."""
    own_forward = module.__dict__.get("forward")
    module.forward = lambda *inputs: function(module, *inputs)
    try:
        return module(*args)
    finally:
        if own_forward is None:
            del module.forward
        else:
            module.forward = own_forward


def _scatter(values, mask):
    """``values`` of the masked positions written into zeros of ``mask``'s shape."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask, values)
