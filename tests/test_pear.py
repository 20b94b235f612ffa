"""PEAR weights and loss against a direct per-sequence loop written from the formulas (float64)."""
import math

import pytest
import torch

from spot_kernels import PEAR_LEVELS, PearConfig, pear_loss, pear_weights


def loop_weights(policy, behavior, seq_index, num_seqs, config):
    """The formulas of spot_kernels/pear.py, one sequence and one token at a time, in Python floats."""
    weights = [None] * len(policy)
    for s in range(num_seqs):
        members = [i for i in range(len(policy)) if int(seq_index[i]) == s]  # in position order
        T = len(members)
        ratios = [min(max(float(policy[i]) - float(behavior[i]), -config.clip_low), config.clip_high) for i in members]
        for t in range(1, T + 1):  # 1-based position
            if config.level == "token":
                w = config.gamma ** (T - t) * math.exp(sum(ratios[t:]))
            elif config.level == "block":
                end = min(((t - 1) // config.block_size + 1) * config.block_size, T)
                w = config.gamma ** (T - end) * math.exp(sum(ratios[end:]))
            else:
                w = math.exp(sum(ratios))
            weights[members[t - 1]] = min(max(w, config.weight_min), config.weight_max)
    return torch.tensor(weights, dtype=torch.float64)


def random_tokens(lengths, interleave, seed, scale=0.2):
    """Per-token log-probs of sequences with ``lengths``; tokens interleaved across sequences if asked."""
    generator = torch.Generator().manual_seed(seed)
    seq_index = torch.cat([torch.full((n,), s) for s, n in enumerate(lengths)])
    if interleave:  # a random merge that keeps each sequence's own order
        seq_index = seq_index[torch.randperm(len(seq_index), generator=generator)]
    n = len(seq_index)
    policy = -torch.rand(n, generator=generator, dtype=torch.float64) * 3
    behavior = policy + torch.randn(n, generator=generator, dtype=torch.float64) * scale
    return policy, behavior, seq_index


LENGTHS = [1, 5, 0, 64, 65, 130, 7]  # one token, an empty sequence, exactly one block, one past it, many blocks


@pytest.mark.parametrize("level", PEAR_LEVELS)
@pytest.mark.parametrize("block_size", [1, 4, 64])
@pytest.mark.parametrize("interleave", [False, True])
def test_weights_match_the_direct_loop(level, block_size, interleave):
    config = PearConfig(level=level, block_size=block_size, gamma=0.99, weight_min=0.5, weight_max=2.0)
    for seed in range(2):
        policy, behavior, seq_index = random_tokens(LENGTHS, interleave, seed)
        got = pear_weights(policy, behavior, seq_index, len(LENGTHS), config)
        expected = loop_weights(policy, behavior, seq_index, len(LENGTHS), config)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
        # The test inputs must exercise both clips and the unclipped middle, or it proves little.
        assert ((expected == config.weight_max) | (expected == config.weight_min)).any()
        assert ((expected > config.weight_min) & (expected < config.weight_max)).any()


def test_default_clips_bound_each_log_ratio_and_each_weight():
    config = PearConfig(level="sequence", weight_min=1e-6, weight_max=1e6)
    seq_index = torch.zeros(3, dtype=torch.long)
    behavior = torch.zeros(3)
    up = pear_weights(torch.tensor([5.0, 0.0, 0.0]), behavior, seq_index, 1, config)
    down = pear_weights(torch.tensor([-5.0, 0.0, 0.0]), behavior, seq_index, 1, config)
    assert float(up[0]) == pytest.approx(math.exp(0.3), rel=1e-6)    # l clipped to clip_high
    assert float(down[0]) == pytest.approx(math.exp(-0.08), rel=1e-6)  # l clipped to -clip_low
    tight = pear_weights(torch.full((100,), 1.0), torch.zeros(100), torch.zeros(100, dtype=torch.long), 1,
                         PearConfig(level="sequence"))
    assert torch.all(tight == 10.0)  # exp(100 * 0.3) clipped to weight_max


@pytest.mark.parametrize("level", PEAR_LEVELS)
def test_equal_policies_reduce_to_discounted_sft(level):
    """pi_theta = pi_b: every log-ratio is 0, so w_t = gamma^(T-t) (token), gamma^(T-end) (block), 1 (sequence)."""
    gamma, block = 0.9, 3
    lengths = [4, 7, 1]
    policy, _, seq_index = random_tokens(lengths, False, seed=3)
    config = PearConfig(level=level, gamma=gamma, block_size=block, weight_min=1e-9)
    loss, weights = pear_loss(policy, policy.clone(), seq_index, len(lengths), config)
    expected = []
    offset = 0
    for T in lengths:
        for t in range(1, T + 1):
            end = min(((t - 1) // block + 1) * block, T)
            exponent = {"token": T - t, "block": T - end, "sequence": 0}[level]
            expected.append(gamma ** exponent * -float(policy[offset + t - 1]))
        offset += T
    expected = torch.tensor(expected, dtype=torch.float64)
    sums = torch.zeros(len(lengths), dtype=torch.float64).index_add(0, seq_index, expected)
    torch.testing.assert_close(loss.double(), sums, rtol=1e-6, atol=1e-6)
    if level == "sequence":
        plain_sft = torch.zeros(len(lengths), dtype=torch.float64).index_add(0, seq_index, -policy)
        torch.testing.assert_close(loss.double(), plain_sft, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("level", PEAR_LEVELS)
def test_weights_are_detached(level):
    """The gradient of the loss w.r.t. each token's log-prob is exactly -w_t: no path through w."""
    policy, behavior, seq_index = random_tokens([9, 70, 3], True, seed=5)
    policy = policy.float().requires_grad_()
    loss, weights = pear_loss(policy, behavior.float(), seq_index, 3, PearConfig(level=level, block_size=8))
    assert not weights.requires_grad
    loss.sum().backward()
    torch.testing.assert_close(policy.grad, -weights, rtol=0, atol=0)
    # A weight that depended on the policy would add sum_j dw_j/dl_t * (-logp_j): make sure that is not 0 here.
    assert (weights != weights.max()).any() and (weights != weights.min()).any()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"policy_logps and behavior_logps and seq_index must be \[N\] tensors of one length"):
        pear_weights(torch.zeros(3), torch.zeros(4), torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"seq_index values must lie in \[0, 2\); got range \[0, 2\]"):
        pear_weights(torch.zeros(3), torch.zeros(3), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(TypeError, match="seq_index must be int64 or int32"):
        pear_weights(torch.zeros(3), torch.zeros(3), torch.zeros(3), 1)
    with pytest.raises(ValueError, match="PEAR level must be one of"):
        PearConfig(level="word")
    with pytest.raises(ValueError, match="gamma"):
        PearConfig(gamma=0.0)
    with pytest.raises(ValueError, match="weight_min <= weight_max"):
        PearConfig(weight_min=2.0, weight_max=1.0)


@pytest.mark.parametrize("level", PEAR_LEVELS)
@pytest.mark.parametrize("interleave", [False, True])
def test_a_nan_log_prob_stays_in_its_own_sequence(level, interleave):
    """One NaN behaviour log-prob: the weights are those of each sequence computed alone (the direct loop,
    whose sums carry the NaN only to the weights that read it), so every other sequence's weights and
    loss are finite and unchanged, and the damaged sequence's loss is NaN, not hidden."""
    lengths = [6, 9, 5, 8]
    config = PearConfig(level=level, block_size=4, gamma=0.9)
    policy, behavior, seq_index = random_tokens(lengths, interleave, seed=7)
    clean_loss, clean_weights = pear_loss(policy, behavior, seq_index, len(lengths), config)
    damaged = behavior.clone()
    members = (seq_index == 1).nonzero().flatten()
    # Token 6 of the 9 of sequence 1 (a sequence before it, two after): the earlier tokens' sums read it,
    # at the block level those of the first block of 4.
    damaged[members[5]] = float("nan")

    loss, weights = pear_loss(policy, damaged, seq_index, len(lengths), config)
    expected = loop_weights(policy, damaged, seq_index, len(lengths), config)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-6, atol=0, equal_nan=True)
    others = seq_index != 1
    torch.testing.assert_close(weights[others], clean_weights[others], rtol=0, atol=0)
    assert torch.isfinite(loss[[0, 2, 3]]).all() and torch.isnan(loss[1])
    torch.testing.assert_close(loss[[0, 2, 3]], clean_loss[[0, 2, 3]], rtol=0, atol=0)
