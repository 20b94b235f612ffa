"""Liger-Kernel's fused linear losses, same constructor and call, computed by ``linear_logprobs``.

Code written for Liger switches by one import:

    from spot_kernels.liger_signature import FusedLinearDPOLoss as LigerFusedLinearDPOLoss
    from spot_kernels.liger_signature import FusedLinearCrossEntropyLoss as LigerFusedLinearCrossEntropyLoss

``FusedLinearDPOLoss(...)(lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None)``
takes, as Liger does, ``_input`` [2B, T, H] with the B chosen rows first and ``target`` [2B, T]
already aligned with the positions (shifted, ``ignore_index`` on prompt and padding), and returns
``(loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss,
chosen_rewards, rejected_rewards))``; only ``loss`` carries gradients (as with Liger, whose other
outputs have none). Algorithm: per-token log-probs through ``linear_logprobs`` (logits never formed),
sums (or means, ``average_log_prob``) per row, the reference's the same way without gradients (0 when
``use_ref_model`` is False), then ``losses.preference_loss`` averaged over pairs, plus ``alpha`` times
the chosen tokens' mean NLL when ``compute_nll_loss`` (``nll_loss`` is 0 otherwise). The logits' means need no logits either:
sum_{i,v} (h_i . W_v + b_v) = (sum_i h_i) . (sum_v W_v) + n sum_v b_v.

Loss types: Liger's ``sigmoid`` and ``bco_pair`` (= ``dpo`` and ``spot_bce`` of ``losses.py``) and
every pairwise kind of ``losses.py`` under its own name (``dpo``, ``spot_bce``, ``spot_bco`` with a
``RewardShift`` updated on every call, ``reward_sft``). Liger's other types, ``label_smoothing``,
and for cross entropy the options that need the logits themselves (class weights, z-loss, label
smoothing, softcapping, token scaling, predicted tokens) are refused at construction. ``compiled``,
``chunk_size`` and ``accum_dtype`` (float32 or None) are accepted and have nothing to do: the kernel
needs no compilation, bounds its own memory and accumulates in float32.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn

from .linear_logprobs import autocast_off, linear_logprobs
from .losses import preference_loss
from .reward_shift import RewardShift

DPO_LOSS_TYPES = {"sigmoid": "dpo", "bco_pair": "spot_bce", "dpo": "dpo", "spot_bce": "spot_bce",
                  "spot_bco": "spot_bco", "reward_sft": "reward_sft"}


def _refuse(cls_name, **options):
    """Raises for the first option in ``options`` (name -> (value, allowed values)) set to another value."""
    for name, (value, allowed) in options.items():
        if value not in allowed:
            raise ValueError(f"{cls_name}: {name}={value!r} is not supported (it needs the logits themselves); "
                             f"use {' or '.join(repr(a) for a in allowed)}")


class FusedLinearDPOLoss(nn.Module):
    """Liger's ``LigerFusedLinearDPOLoss`` (module docstring)."""

    def __init__(self, ignore_index=-100, beta=0.1, alpha=1.0, compute_nll_loss=False, compiled=True,
                 use_ref_model=True, average_log_prob=False, chunk_size=1, loss_type="sigmoid",
                 label_smoothing=0.0, discopop_tau=0.05, reward_shift: Optional[RewardShift] = None):
        super().__init__()
        if loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"FusedLinearDPOLoss: loss_type {loss_type!r} is not supported; "
                             f"expected one of {sorted(DPO_LOSS_TYPES)}")
        _refuse("FusedLinearDPOLoss", label_smoothing=(label_smoothing, (0.0,)))
        self.ignore_index, self.beta, self.alpha = ignore_index, beta, alpha
        self.compute_nll_loss, self.use_ref_model, self.average_log_prob = compute_nll_loss, use_ref_model, average_log_prob
        self.loss_type, self.kind = loss_type, DPO_LOSS_TYPES[loss_type]
        self.reward_shift = reward_shift if reward_shift is not None else RewardShift()

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None):
        if _input.dim() != 3 or target.shape != _input.shape[:2] or _input.shape[0] % 2:
            raise ValueError(f"_input must be [2B, T, H] (chosen rows first) and target [2B, T]; got "
                             f"{tuple(_input.shape)} and {tuple(target.shape)}")
        logps, token_logps, counts = self._row_logps(_input, lin_weight, target, bias)
        if self.use_ref_model:
            if ref_input is None or ref_weight is None:
                raise ValueError("use_ref_model=True needs ref_input and ref_weight")
            with torch.no_grad():
                ref_logps = self._row_logps(ref_input, ref_weight, target, ref_bias)[0]
        else:
            ref_logps = torch.zeros_like(logps)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        delta = 0.0
        chosen_rewards = self.beta * (chosen - ref_chosen).detach()
        rejected_rewards = self.beta * (rejected - ref_rejected).detach()
        if self.kind == "spot_bco":
            delta = self.reward_shift.update(chosen_rewards, rejected_rewards)
        loss = preference_loss(self.kind, chosen, rejected, ref_chosen, ref_rejected, beta=self.beta, delta=delta).mean()
        num_pairs = _input.shape[0] // 2
        nll = loss.new_zeros(())  # as Liger: 0 unless computed
        if self.compute_nll_loss:
            nll = -token_logps[:num_pairs].sum() / counts[:num_pairs].sum().clamp(min=1)
            loss = loss + self.alpha * nll
        chosen_logits_mean, rejected_logits_mean = _logits_means(_input, lin_weight, bias)
        return loss, (chosen.detach(), rejected.detach(), chosen_logits_mean, rejected_logits_mean, nll.detach(),
                      chosen_rewards, rejected_rewards)

    def _row_logps(self, hidden, weight, target, bias):
        """Per-row sums (means with ``average_log_prob``), per-token log-probs [2B, T], token counts [2B]."""
        token_logps = linear_logprobs(hidden.reshape(-1, hidden.shape[-1]), weight, target.reshape(-1), bias,
                                      ignore_index=self.ignore_index).view(target.shape)
        counts = (target != self.ignore_index).sum(1)
        sums = token_logps.sum(1)
        return (sums / counts.clamp(min=1) if self.average_log_prob else sums), token_logps, counts


@torch.no_grad()
def _logits_means(hidden, weight, bias):
    """Liger's chosen and rejected logits means: the sum of every logit of the chosen (rejected) half,
    ignored positions included, over B * T * V; computed as (sum_i h_i) . (sum_v W_v) (+ n sum_v b_v),
    in fp32 with autocast off."""
    num_pairs, length, vocab = hidden.shape[0] // 2, hidden.shape[1], weight.shape[0]
    means = []
    with autocast_off(hidden.device):
        weight_sum = weight.sum(0, dtype=torch.float32)
        for half in hidden.chunk(2):
            total = half.reshape(-1, half.shape[-1]).sum(0, dtype=torch.float32) @ weight_sum
            if bias is not None:
                total = total + half.shape[0] * length * bias.sum(dtype=torch.float32)
            means.append(total / (num_pairs * length * vocab))
    return tuple(means)


class CrossEntropyOutput(NamedTuple):
    """Liger's ``CrossEntropyOutput`` fields; ``z_loss`` and ``predicted_tokens`` are never served."""
    loss: torch.Tensor
    z_loss: Optional[torch.Tensor] = None
    token_accuracy: Optional[torch.Tensor] = None
    predicted_tokens: Optional[torch.Tensor] = None


class FusedLinearCrossEntropyLoss(nn.Module):
    """Liger's ``LigerFusedLinearCrossEntropyLoss``: ``forward(lin_weight, _input [N, H], target [N], bias=None)``
    returns the cross entropy of ``_input @ lin_weight.T (+ bias)`` (``reduction`` mean over the
    non-ignored tokens, sum, or none: per token, 0 where ignored), as a ``CrossEntropyOutput`` with the
    token accuracy when ``return_token_accuracy``: as Liger's, the fraction of non-ignored tokens whose
    target is the first argmax, or with ``reduction="none"`` that flag per token ([N] fp32, 0 where
    ignored) (module docstring)."""

    def __init__(self, ce_weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0,
                 reduction="mean", softcap=None, return_z_loss=False, accum_dtype=None, use_token_scaling=False,
                 return_token_accuracy=False, return_predicted_tokens=False):
        super().__init__()
        _refuse("FusedLinearCrossEntropyLoss", ce_weight=(ce_weight, (None,)),
                lse_square_scale=(lse_square_scale, (0.0,)), label_smoothing=(label_smoothing, (0.0,)),
                softcap=(softcap, (None,)), return_z_loss=(return_z_loss, (False,)),
                accum_dtype=(accum_dtype, (None, torch.float32)), use_token_scaling=(use_token_scaling, (False,)),
                return_predicted_tokens=(return_predicted_tokens, (False,)))
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"FusedLinearCrossEntropyLoss: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
        self.ignore_index, self.reduction, self.return_token_accuracy = ignore_index, reduction, return_token_accuracy

    def forward(self, lin_weight, _input, target, bias=None):
        out = linear_logprobs(_input, lin_weight, target, bias, ignore_index=self.ignore_index,
                              return_stats=self.return_token_accuracy)
        logp = out.logp if self.return_token_accuracy else out
        kept = target != self.ignore_index
        losses = -logp
        if self.reduction == "mean":
            loss = losses.sum() / kept.sum().clamp(min=1)
        else:
            loss = losses.sum() if self.reduction == "sum" else losses
        if not self.return_token_accuracy:
            return loss
        correct = out.target_is_argmax.float()  # 0 at ignored positions
        accuracy = correct if self.reduction == "none" else correct.sum() / kept.sum().clamp(min=1)
        return CrossEntropyOutput(loss=loss, token_accuracy=accuracy)
