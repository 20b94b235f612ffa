"""spot_kernels: fused LM-head log-probs and preference losses, reusable by any trainer.

    logp = linear_logprobs(hidden, lm_head.weight, targets)      # [N] fp32, logits never formed
    seq = sequence_logps(logp, seq_index, num_seqs)               # [num_seqs] sums
    loss = preference_loss("spot_bco", pc, pr, rc, rr, beta=0.1, delta=shift.update(rc_r, rr_r))

Depends on torch and (for the ``triton`` backend) triton only.
"""
from .linear_logprobs import BACKENDS, TokenLogprobs, linear_logprobs, resolve_backend
from .losses import LOSS_KINDS, implicit_reward, preference_loss, sequence_logps
from .reference import eager_linear_logprobs
from .reward_shift import RewardShift

__all__ = [
    "BACKENDS", "LOSS_KINDS", "RewardShift", "TokenLogprobs", "eager_linear_logprobs",
    "implicit_reward", "linear_logprobs", "preference_loss", "resolve_backend", "sequence_logps",
]
