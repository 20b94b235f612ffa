"""spot_kernels: fused LM-head log-probs and preference losses, reusable by any trainer.

    logp = linear_logprobs(hidden, lm_head.weight, targets)      # [N] fp32, logits never formed
    seq = sequence_logps(logp, seq_index, num_seqs)               # [num_seqs] sums
    loss = preference_loss("spot_bco", pc, pr, rc, rr, beta=0.1, delta=shift.update(rc_r, rr_r))
    loss, w = pear_loss(logp, behavior_logp, seq_index, num_seqs, PearConfig(level="token"))  # PEAR SFT

Depends on torch and (for the ``triton`` backend) triton only. For other trainers, imported on their own:
``spot_kernels.causal_lm`` (per-token log-probs of any Hugging Face causal LM in one call),
``spot_kernels.liger_signature`` (Liger's fused linear DPO and cross-entropy modules' signatures) and
``spot_kernels.trl_integration`` (TRL's DPO and GRPO trainers; imports trl).
"""
from .linear_logprobs import BACKENDS, TokenLogprobs, linear_logprobs, linear_logprobs_unchecked, resolve_backend
from .losses import LOSS_KINDS, implicit_reward, preference_loss, segment_sum, sequence_logps
from .pear import PEAR_LEVELS, PearConfig, pear_loss, pear_weights
from .eager import eager_linear_logprobs
from .reward_shift import RewardShift

__all__ = [
    "BACKENDS", "LOSS_KINDS", "PEAR_LEVELS", "PearConfig", "RewardShift", "TokenLogprobs", "eager_linear_logprobs",
    "implicit_reward", "linear_logprobs", "linear_logprobs_unchecked", "pear_loss", "pear_weights", "preference_loss", "resolve_backend", "segment_sum", "sequence_logps",
]
