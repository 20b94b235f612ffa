"""Forgetting signals on a retain set: the estimators, and the measurement through the fused head
against per-token log-probs from the models' own logits."""
import math

import pytest
import torch

from spot_fast.data import load_pairs
from spot_fast.forgetting.retain import RetainSet, forgetting_metrics, forgetting_sums
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.logprob_head import LogprobModel, install_logprob_head
from spot_fast.scoring import Scorer

from hf_logps import hf_token_logps, perturbed


def test_estimators_match_their_formulas():
    generator = torch.Generator().manual_seed(0)
    reference = -torch.rand(300, generator=generator, dtype=torch.float64) * 5
    policy = reference + torch.randn(300, generator=generator, dtype=torch.float64) * 0.5
    halves = forgetting_sums(policy[:100], reference[:100]) + forgetting_sums(policy[100:], reference[100:])
    got = forgetting_metrics(halves)
    log_r = [float(p - q) for p, q in zip(policy, reference)]
    assert got["retain/nll"] == pytest.approx(-float(policy.sum()) / 300, rel=1e-12)
    assert got["retain/kl"] == pytest.approx(-sum(log_r) / 300, rel=1e-12)
    assert got["retain/kl_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in log_r) / 300, rel=1e-12)
    assert got["retain/kl_k3"] > 0
    same = forgetting_metrics(forgetting_sums(reference, reference))
    assert same["retain/kl"] == 0 and same["retain/kl_k3"] == 0


@pytest.mark.parametrize("pack", [True, False])
def test_measure_equals_the_models_own_logits(pack):
    """Reference per-token log-probs through the Scorer, then the signals of a perturbed
    policy, in batches of 3 (the last one short), equal the same numbers from materialized logits."""
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "retain.jsonl", tokenizer, 8192, with_rejected=False)[0][:7]
    reference_model = LogprobModel(install_logprob_head(load_model(BUILTIN_MODEL)))
    scorer = Scorer(3, pack, tokenizer.pad_token_id, torch.device("cpu"))
    reference = scorer.score(reference_model, pairs, per_token=True)
    plain_reference = load_model(BUILTIN_MODEL)
    expected_reference = torch.cat([hf_token_logps(plain_reference, p.prompt_ids, p.chosen_ids) for p in pairs])
    torch.testing.assert_close(reference.double(), expected_reference, rtol=1e-5, atol=1e-5)

    retain = RetainSet(pairs, reference, scorer)
    assert retain.measure(reference_model)["retain/kl_k3"] == pytest.approx(0, abs=1e-9)
    policy = LogprobModel(install_logprob_head(perturbed(load_model(BUILTIN_MODEL), scale=0.05)))
    plain_policy = load_model(BUILTIN_MODEL)
    plain_policy.load_state_dict(policy.model.state_dict())
    policy.train()
    got = retain.measure(policy)
    assert policy.training  # restored after measuring
    expected = forgetting_metrics(forgetting_sums(
        torch.cat([hf_token_logps(plain_policy, p.prompt_ids, p.chosen_ids) for p in pairs]), expected_reference))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert expected["retain/kl_k3"] > 1e-3  # the perturbation is visible, so the comparison means something


def test_reference_of_the_wrong_length_is_refused():
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "retain.jsonl", tokenizer, 8192, with_rejected=False)[0][:2]
    with pytest.raises(ValueError, match="completion tokens but"):
        RetainSet(pairs, torch.zeros(3), Scorer(2, True, tokenizer.pad_token_id, torch.device("cpu")))
