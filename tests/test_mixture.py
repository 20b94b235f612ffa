"""Predictions of the two-mode mixture lab (spot_fast/forgetting/mixture.py, arXiv 2603.12163)."""
import os

import numpy as np
import pytest

from spot_fast.forgetting import mixture as mx

STEPS, LR = 3000, 1.0


@pytest.fixture(scope="module")
def exact_1d():
    return {d: mx.run_exact(d, 1, STEPS, LR) for d in mx.D_VALUES}


@pytest.fixture(scope="module")
def sampled():
    return {rho: mx.run_sampled(6, 1, STEPS, mx.SAMPLED_LR, rho, seed=0) for rho in (0.0, mx.RHO)}


def test_a_forward_kl_on_new_data_forgets_old_mass(exact_1d):
    for d in range(5, 9):
        weights = exact_1d[d]["forward_new"]["weights"]
        assert weights[-1] < 0.02, d
        assert np.all(np.diff(weights) <= 1e-12), d  # never rises
    # Overlapping modes forget by drift instead: the old component slides onto the new mode.
    for d in (1, 2, 3, 4):
        run = exact_1d[d]["forward_new"]
        assert run["weights"][-1] > 0.9 and abs(run["drift"][-1] - d) < 0.05, d


def test_b_forward_kl_with_replay_keeps_lam(exact_1d):
    for d in range(2, 9):
        assert abs(exact_1d[d]["forward_replay"]["final_weight"] - mx.LAM) < 0.01, d


def test_c_reverse_kl_recovers_a_star_with_overlap_gated_drift(exact_1d):
    for d in range(2, 9):
        assert abs(exact_1d[d]["reverse"]["final_weight"] - mx.A_STAR) < 0.01, d
    # Separated modes (d >= 5): the drift is the leading-order prediction, 1.79 BC, to within 10% (the
    # 1/d corrections): above BC = exp(-d^2/8), which sets its scale but does not bound it.
    ds = np.arange(5, 9)
    drift = np.array([exact_1d[d]["reverse"]["max_drift"] for d in ds])
    assert mx.predicted_reverse_drift(0.0) == pytest.approx(1.789, abs=1e-3)
    assert np.all(np.abs(drift / mx.predicted_reverse_drift(ds) - 1) < 0.1), drift / mx.predicted_reverse_drift(ds)
    assert np.all(drift > mx.bhattacharyya(ds))
    # log drift = -d^2 / 8 + O(1): slope in d^2 within 0.01 of -1/8 (drift >= 5e-4 here, far above the
    # grid's ~1e-10 error).
    slope = np.polyfit(ds**2, np.log(drift), 1)[0]
    assert abs(slope + 1 / 8) < 0.01, slope


def test_c_force_on_the_old_mean_is_the_derived_leading_order():
    """The exact gradient of reverse KL on m_old at the start, over the curvature a, against
    ``predicted_reverse_drift``: the ratio tends to 1 as d grows (the correction is O(1/d))."""
    ratios = []
    for d in (6, 9, 12):
        mu_old, mu_new = mx.task_means(d, 1)
        x, vol = mx.make_grid(mu_old, mu_new, mx.GRID_STEP[1])
        p_star = mx.A_STAR * mx.gauss(x, mu_old) + (1 - mx.A_STAR) * mx.gauss(x, mu_new)
        grad = mx.reverse_kl_grad(mx.init_theta(mu_old, mu_new), x, vol, p_star)
        ratios.append(abs(grad[1]) / mx.A_INIT / mx.predicted_reverse_drift(d))
    assert ratios == sorted(ratios) and 0.95 < ratios[-1] < 1, ratios


def test_d1_converges_slowly_to_lam_and_a_star():
    run = mx.run_exact(1, 1, 50000, LR)  # overlapping modes: nearly flat directions, slow convergence
    assert abs(run["forward_replay"]["final_weight"] - mx.LAM) < 0.01
    assert abs(run["reverse"]["final_weight"] - mx.A_STAR) < 0.01


def test_2d_matches_1d_by_rotation_invariance():
    one, two = mx.run_exact(6, 1, STEPS, LR), mx.run_exact(6, 2, STEPS, LR)
    for name in one:
        assert two[name]["final_weight"] == pytest.approx(one[name]["final_weight"], rel=1e-4, abs=1e-7)
        assert two[name]["max_drift"] == pytest.approx(one[name]["max_drift"], rel=1e-4)


def test_d_starvation_and_replay(sampled):
    """Each sample is from an old mode w.p. (1 - rho) a + rho, so a batch of B has none w.p.
    ((1 - rho)(1 - a))^B: (1 - a*)^B on-policy, (1 - rho)^B (1 - a*)^B with replay, once a = a*."""
    late_fraction = {}
    for rho, run in sampled.items():
        weights, starved = run["weights"][:-1], run["starved"]  # weights[t] is the a that drew batch t
        # Given the trajectory, starvation events are independent Bernoulli(((1 - rho)(1 - a_t))^B).
        p = ((1 - rho) * (1 - weights)) ** mx.BATCH
        assert abs(starved.sum() - p.sum()) <= 4 * np.sqrt(np.sum(p * (1 - p))), rho
        # Second half: converged to a*, so the count is Binomial(n, ((1 - rho)(1 - a*))^B).
        late = slice(len(starved) // 2, None)
        assert np.allclose(weights[late], mx.A_STAR, atol=1e-3), rho
        p_star = ((1 - rho) * (1 - mx.A_STAR)) ** mx.BATCH
        n = len(starved[late])
        late_fraction[rho] = starved[late].mean()
        assert abs(late_fraction[rho] - p_star) <= 4 * np.sqrt(p_star * (1 - p_star) / n), rho
        assert run["max_weight"] <= 1 / (1 - rho) + 1e-12, rho
    assert sampled[0.0]["max_weight"] == pytest.approx(1.0)
    assert late_fraction[mx.RHO] < late_fraction[0.0] / 4  # expected ratio (1 - rho)^B = 1/16


@pytest.mark.parametrize("rho", [0.0, mx.RHO])
def test_d_sampled_gradient_is_unbiased(rho):
    d = 2
    mu_old, mu_new = mx.task_means(d, 1)
    theta = np.array([np.log(0.6 / 0.4), 0.3, d - 0.4])
    x, vol = mx.make_grid(mu_old, mu_new, mx.GRID_STEP[1])
    p_star = mx.A_STAR * mx.gauss(x, mu_old) + (1 - mx.A_STAR) * mx.gauss(x, mu_new)
    exact = mx.reverse_kl_grad(theta, x, vol, p_star)
    rng = np.random.default_rng(1)
    grads = np.array(
        [mx.sampled_reverse_kl_grad(theta, mu_old, mu_new, mx.A_STAR, 5000, rho, rng)[0] for _ in range(100)]
    )
    stderr = grads.std(axis=0, ddof=1) / np.sqrt(len(grads))
    assert np.all(np.abs(grads.mean(axis=0) - exact) <= 5 * stderr), (grads.mean(axis=0), exact, stderr)
    assert np.all(5 * stderr < 0.2 * np.abs(exact))  # the check has power


def test_cli_writes_plot(tmp_path, capsys):
    mx.main(["--out-dir", str(tmp_path), "--steps", "50"])
    assert os.path.getsize(tmp_path / "mixture_1d.png") > 0
    assert "drift/BC" in capsys.readouterr().out
