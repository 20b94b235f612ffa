"""Sequence sums, the preference objectives against hand-written formulas, gradient cancellation on
shared tokens, and RewardShift against a direct computation."""
import math

import pytest
import torch

from spot_kernels import LOSS_KINDS, RewardShift, preference_loss, sequence_logps


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_sequence_logps_sums_per_sequence():
    g = torch.Generator().manual_seed(0)
    token_logps = torch.randn(50, generator=g, dtype=torch.float64).requires_grad_(True)
    seq_index = torch.randint(0, 7, (50,), generator=g)
    seq_index[seq_index == 3] = 4  # sequence 3 is empty
    out = sequence_logps(token_logps, seq_index, 7)
    expected = [sum(float(token_logps.detach()[i]) for i in range(50) if seq_index[i] == s) for s in range(7)]
    assert out.dtype == torch.float64 and out[3] == 0  # float64 stays float64; narrower inputs sum in fp32
    assert sequence_logps(token_logps.detach().bfloat16(), seq_index, 7).dtype == torch.float32
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert torch.equal(token_logps.grad, torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("seq_index, num_seqs, message", [
    (torch.tensor([0, 1, 5]), 3, r"seq_index values must lie in \[0, 3\)"),
    (torch.tensor([0, 1]), 3, r"token_logps and seq_index must be \[N\] tensors of one length"),
    (torch.tensor([0.0, 1.0, 0.0]), 3, "must be int64"),
])
def test_sequence_logps_bad_input(seq_index, num_seqs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        sequence_logps(torch.zeros(3), seq_index, num_seqs)


def hand_written(kind, pc, pr, rc, rr, beta, delta, length):
    r_chosen, r_rejected = beta * (pc - rc), beta * (pr - rr)
    return {
        "sft": -pc / length,
        "reward_sft": -log_sigmoid(r_chosen),
        "dpo": -log_sigmoid(r_chosen - r_rejected),
        "spot_bce": -log_sigmoid(r_chosen) - log_sigmoid(-r_rejected),
        "spot_bco": -log_sigmoid(r_chosen - delta) - log_sigmoid(-(r_rejected - delta)),
    }[kind]


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_each_loss_matches_its_formula(kind):
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(9, generator=g) * 20 - 40 for _ in range(4))
    lengths = torch.randint(1, 30, (9,), generator=g)
    beta, delta = 0.3, 0.7
    losses = preference_loss(kind, pc, pr, rc, rr, beta=beta, delta=delta, chosen_lengths=lengths)
    expected = [hand_written(kind, float(pc[i]), float(pr[i]), float(rc[i]), float(rr[i]), beta, delta, int(lengths[i]))
                for i in range(9)]
    torch.testing.assert_close(losses.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def shared_token_gradient(kind, delta_fn):
    """Gradient on the per-token log-probs of a prefix shared by chosen and rejected (same tensor)."""
    g = torch.Generator().manual_seed(2)
    shared = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_(True)
    chosen_only, rejected_only = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    policy_chosen = (shared.sum() + chosen_only.sum()).reshape(1)
    policy_rejected = (shared.sum() + rejected_only.sum()).reshape(1)
    ref_chosen, ref_rejected = torch.tensor([-3.0], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64)
    delta = delta_fn(0.1 * (policy_chosen - ref_chosen).detach(), 0.1 * (policy_rejected - ref_rejected).detach())
    loss = preference_loss(kind, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, delta=delta)
    loss.sum().backward()
    return shared.grad


def test_dpo_gradient_on_shared_tokens_is_exactly_zero():
    assert torch.count_nonzero(shared_token_gradient("dpo", lambda rc, rr: 0.0)) == 0


def test_spot_bco_with_midpoint_delta_cancels_on_shared_tokens():
    assert torch.count_nonzero(shared_token_gradient("spot_bco", lambda rc, rr: (rc + rr) / 2)) == 0


def test_spot_bce_does_not_cancel_on_shared_tokens():
    """The cancellation above is a property of the objective, not of the test: spot_bce keeps a term."""
    assert torch.count_nonzero(shared_token_gradient("spot_bce", lambda rc, rr: 0.0)) > 0


def test_loss_argument_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="unknown loss 'ipo'"):
        preference_loss("ipo", x, x, x, x)
    with pytest.raises(ValueError, match="needs ref_rejected"):
        preference_loss("dpo", x, x, x, None)
    with pytest.raises(ValueError, match="needs chosen_lengths"):
        preference_loss("sft", x)
    with pytest.raises(ValueError, match="one shape"):
        preference_loss("dpo", x, torch.zeros(4), x, x)


def batches(seed=3, count=6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g), torch.randn(n, generator=g) - 1) for n in (4, 7, 2, 5, 4, 3)[:count]]


def test_reward_shift_cumulative_is_the_mean_of_everything_seen_so_far():
    shift, seen = RewardShift("cumulative"), []
    for chosen, rejected in batches():
        seen += chosen.tolist() + rejected.tolist()
        delta = shift.update(chosen, rejected)  # update-then-use: includes this batch
        assert abs(float(delta) - sum(seen) / len(seen)) < 1e-6


def test_reward_shift_ema_follows_its_recursion():
    shift, expected = RewardShift("ema", decay=0.9), None
    for chosen, rejected in batches():
        batch_mean = float(torch.cat([chosen, rejected]).double().mean())
        expected = batch_mean if expected is None else 0.9 * expected + 0.1 * batch_mean
        assert abs(float(shift.update(chosen, rejected)) - expected) < 1e-6


def test_reward_shift_all_reduce_combines_ranks_exactly():
    """Two ranks of unequal batch sizes: the hook sums (sum, count), giving the mean over both."""
    other_rank = batches(seed=4)
    shift, seen = RewardShift("cumulative"), []
    for step, (chosen, rejected) in enumerate(batches()):
        other_chosen, other_rejected = other_rank[step]
        other_values = torch.cat([other_chosen, other_rejected]).double()
        shift.all_reduce = lambda stats, v=other_values: stats.add_(torch.stack([v.sum(), torch.tensor(float(v.numel()), dtype=torch.float64)]))
        seen += chosen.tolist() + rejected.tolist() + other_values.tolist()
        assert abs(float(shift.update(chosen, rejected)) - sum(seen) / len(seen)) < 1e-6


def test_reward_shift_state_round_trip_continues_identically():
    data = batches()
    full = RewardShift("cumulative")
    for chosen, rejected in data:
        full.update(chosen, rejected)
    first, resumed = RewardShift("cumulative"), RewardShift("cumulative")
    for chosen, rejected in data[:3]:
        first.update(chosen, rejected)
    resumed.load_state_dict(first.state_dict())
    for chosen, rejected in data[3:]:
        resumed.update(chosen, rejected)
    assert float(resumed.value) == pytest.approx(float(full.value), abs=1e-7)
    with pytest.raises(ValueError, match="checkpoint reward shift is 'cumulative'"):
        RewardShift("ema").load_state_dict(first.state_dict())
