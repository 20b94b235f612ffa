"""PEAR (arXiv 2602.01058): SFT on behaviour-policy data, each token's NLL times a detached importance weight.

With per-token log-ratios ``l_j = logp_theta(y_j) - logp_b(y_j)`` clipped to ``[-clip_low, clip_high]``,
tokens ``t = 1..T`` of a sequence, and ``S(t) = sum_{j>t} l_j`` (the log-ratio of the continuation):

    token      w_t = gamma^(T-t) * exp(S(t))
    block      tokens in blocks of ``block_size`` from the start; a block ending at token ``e`` gives all
               its tokens gamma^(T-e) * exp(S(e))      (the token weight of the block's last token)
    sequence   w_t = exp(sum_j l_j)                   (no discount)

then ``w_t`` is clipped to ``[weight_min, weight_max]`` and detached, and the per-sequence loss is
``sum_t w_t * (-logp_theta(y_t))``. With pi_theta = pi_b every ``l_j`` is 0, so the loss is SFT with
the discount ``gamma^(T-t)`` (token, block) or plain summed SFT (sequence). The last token of every
sequence has weight ``gamma^0 * exp(0) = 1`` at the token and block levels.

The weights are computed in float64 in log space (no overflow before the clip), from the per-token
log-probs the fused kernel already returns: no extra pass over the vocabulary. Cost O(N log N) for
one stable sort by sequence; tokens of a sequence may be interleaved with other sequences' tokens
but must appear in position order. The computation never synchronises with the host (per-sequence
counts by ``segment_sum``, not ``bincount``, whose CUDA kernel reads the maximum back); checking the
sequence indices does (one read of their range), so a caller that guarantees them (the trainer's
batches) passes ``check=False``.

Each sequence's weights are those of the sequence computed alone. The suffix sums come from one
cumulative sum over all tokens, so a NaN log-ratio (a NaN log-prob) is summed as 0 there and its NaN
is put back into exactly the weights whose sums contain it (``S(t)`` with the NaN token after ``t``;
every weight of its sequence at the sequence level): the damaged sequence's loss is NaN, no other
sequence's changes. No host sync is spent looking for NaN.

The defaults are this library's choice (the paper publishes no code): clip_low 0.08, clip_high 0.3,
weight_min 0.1, weight_max 10, gamma 0.999, block_size 64.
"""
import math
from dataclasses import dataclass

import torch

from .losses import check_sequence_index, segment_sum

PEAR_LEVELS = ("token", "block", "sequence")


@dataclass(frozen=True)
class PearConfig:
    level: str = "token"
    clip_low: float = 0.08    # each log-ratio is clipped to [-clip_low, clip_high]
    clip_high: float = 0.3
    weight_min: float = 0.1   # each weight is clipped to [weight_min, weight_max]
    weight_max: float = 10.0
    gamma: float = 0.999      # discount per token to the end of the sequence (token, block)
    block_size: int = 64

    def __post_init__(self):
        if self.level not in PEAR_LEVELS:
            raise ValueError(f"PEAR level must be one of {PEAR_LEVELS}; got {self.level!r}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(f"PEAR log-ratio clips must be >= 0; got clip_low {self.clip_low}, clip_high {self.clip_high}")
        if not 0 < self.weight_min <= self.weight_max:
            raise ValueError(f"PEAR weights need 0 < weight_min <= weight_max; got {self.weight_min}, {self.weight_max}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"PEAR gamma must lie in (0, 1]; got {self.gamma}")
        if self.block_size < 1:
            raise ValueError(f"PEAR block_size must be >= 1; got {self.block_size}")


@torch.no_grad()
def pear_weights(policy_logps, behavior_logps, seq_index, num_seqs, config=PearConfig(), check=True):
    """[N] fp32 detached PEAR weights (see the module docstring) of tokens in sequences ``seq_index``
    (``check=False``: the caller guarantees ``seq_index`` is [N] in [0, num_seqs); no host sync)."""
    if check:
        check_sequence_index(seq_index, num_seqs, policy_logps=policy_logps, behavior_logps=behavior_logps)
    seq = seq_index.long()
    ratios = (policy_logps.double() - behavior_logps.double()).clamp(-config.clip_low, config.clip_high)
    if config.level == "sequence":
        log_weights = segment_sum(ratios, seq, num_seqs)[seq]  # sum_j l_j of the token's sequence
    else:
        # Sort by sequence (stable: keeps position order), so each sequence is one contiguous run.
        order = torch.argsort(seq, stable=True)
        sorted_seq = seq[order]
        counts = segment_sum(torch.ones_like(seq), seq, num_seqs)                # tokens per sequence
        starts = counts.cumsum(0) - counts
        position = torch.arange(seq.numel(), device=seq.device) - starts[sorted_seq]  # t - 1
        length = counts[sorted_seq]                                                    # T
        # The sums run across sequences: a NaN enters them as 0 and is put back below through last_nan.
        nan = ratios[order].isnan()
        known = ratios[order].masked_fill(nan, 0.0)
        last_nan = torch.full_like(counts, -1).scatter_reduce(0, sorted_seq, torch.where(nan, position, -1), "amax")
        totals = segment_sum(known, sorted_seq, num_seqs)                  # sum_j l_j per sequence
        running = known.cumsum(0)
        offsets = totals.cumsum(0) - totals                                # sum of the earlier sequences
        prefix = running - offsets[sorted_seq]                             # sum_{j<=t} l_j
        suffix = totals[sorted_seq] - prefix                               # S(t)
        if config.level == "block":
            end = torch.minimum((position // config.block_size + 1) * config.block_size, length)  # 1-based
            suffix = suffix[starts[sorted_seq] + end - 1]                  # S(end), read at the block's last token
            position = end - 1
        log_weights_sorted = (length - 1 - position).double() * math.log(config.gamma) + suffix
        log_weights_sorted = log_weights_sorted.masked_fill(last_nan[sorted_seq] > position, math.nan)  # NaN in S
        log_weights = torch.empty_like(log_weights_sorted).scatter_(0, order, log_weights_sorted)
    log_weights = log_weights.clamp(math.log(config.weight_min), math.log(config.weight_max))
    return log_weights.exp().float()


def pear_loss(policy_logps, behavior_logps, seq_index, num_seqs, config=PearConfig(), check=True):
    """Per-sequence PEAR loss ``sum_t w_t * (-policy_logps[t])`` [num_seqs] and the weights ``w`` [N].

    Differentiable w.r.t. ``policy_logps`` only through the NLL: ``d loss / d policy_logps[t] = -w_t``.
    """
    weights = pear_weights(policy_logps, behavior_logps, seq_index, num_seqs, config, check)
    return segment_sum(-weights * policy_logps.float(), seq_index, num_seqs), weights
