"""Every sample is drawn from a seed of its own, (seed, sample id): elicit and spot-fast-eval draw the
same sample for a (problem, repetition) whether the run was interrupted and resumed, batched otherwise,
or asked for fewer repetitions, as an uninterrupted run draws it (built-in tiny model, ~30 s on 2 cores)."""
import json
import math
from pathlib import Path

import torch

from spot_fast.evaluate.__main__ import main as eval_main
from spot_fast.rectify import layout
from spot_fast.rectify.__main__ import main as rectify_main
from spot_fast.sampling.generation import HFGenerator, RowNoise, sample_seed

PROBLEMS = Path(__file__).resolve().parents[1] / "spot_fast" / "assets" / "problems.jsonl"
TINY_MATH = Path(__file__).resolve().parents[1] / "spot_fast" / "assets" / "benchmarks" / "tiny_math.jsonl"


def responses(path):
    return {r["id"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}


def elicit(workdir, samples, batch_size):
    return rectify_main(["elicit", "--workdir", str(workdir), "--problems", str(PROBLEMS), "--limit", "3",
                         "--samples", str(samples), "--batch-size", str(batch_size), "--max-new-tokens", "12"])


def test_elicit_samples_do_not_depend_on_what_was_sampled_before(tmp_path, monkeypatch):
    assert elicit(tmp_path / "whole", samples=4, batch_size=4) == 0
    uninterrupted = responses(tmp_path / "whole" / layout.RESULTS)
    assert len(uninterrupted) == 12 and len(set(uninterrupted.values())) == 12

    # fewer repetitions first, then more of them, interrupted after one batch and resumed with other batches
    assert elicit(tmp_path / "parts", samples=2, batch_size=3) == 0
    generate = HFGenerator.generate
    calls = []

    def interrupted_after_one_batch(self, questions, sample_ids):
        calls.append(sample_ids)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(self, questions, sample_ids)

    monkeypatch.setattr(HFGenerator, "generate", interrupted_after_one_batch)
    assert elicit(tmp_path / "parts", samples=4, batch_size=2) == 130
    monkeypatch.setattr(HFGenerator, "generate", generate)
    assert len(responses(tmp_path / "parts" / layout.RESULTS)) == 8
    assert elicit(tmp_path / "parts", samples=4, batch_size=5) == 0
    assert responses(tmp_path / "parts" / layout.RESULTS) == uninterrupted


def test_eval_samples_do_not_depend_on_the_number_of_repetitions(tmp_path):
    def run(out, samples):
        assert eval_main(["--model", "builtin:tiny-qwen3", "--benchmarks", str(TINY_MATH), "--limit", "2",
                          "--samples", str(samples), "--max-new-tokens", "8", "--output-dir", str(out)]) == 0
        return responses(out / "samples" / "builtin-tiny-qwen3.jsonl")

    one, three = run(tmp_path / "one", 1), run(tmp_path / "three", 3)
    assert len(one) == 2 and len(three) == 6
    assert one == {key: three[key] for key in one}


def test_sample_seeds_are_stable_across_processes():
    """Pinned values: Python's ``hash`` of a string would change from process to process, and any
    change of the derivation would silently draw other samples for a resumed log."""
    assert sample_seed(0, "demo-280#0") == 4704531130961816802
    assert sample_seed(1, "demo-280#0") == 5808152162370848217
    assert sample_seed(0, "demo-280#1") != sample_seed(0, "demo-280#0")
    assert all(0 <= sample_seed(s, "x") < 2**63 for s in range(100))


def test_row_noise_draws_from_the_softmax_of_the_scores():
    """Greedy decoding over the noised scores samples each token with its softmax probability, and a
    token cut to -inf (top-k / top-p) is never drawn."""
    probabilities = torch.tensor([0.5, 0.3, 0.2, 0.0])
    rows = 20000
    scores = probabilities.log().expand(rows, -1)
    noise = RowNoise([sample_seed(0, f"row{i}") for i in range(rows)], "cpu")
    drawn = torch.bincount(noise(None, scores).argmax(dim=-1), minlength=4) / rows
    tolerance = 4 * math.sqrt(0.25 / rows)  # four standard deviations of a frequency
    assert torch.allclose(drawn, probabilities, atol=tolerance), drawn
    assert drawn[3] == 0


def test_a_row_draws_the_same_noise_alone_as_beside_other_rows():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    seeds = [sample_seed(0, f"p#{k}") for k in range(3)]
    together = RowNoise(seeds, "cpu")(None, scores)
    alone = torch.cat([RowNoise([seed], "cpu")(None, scores[i:i + 1]) for i, seed in enumerate(seeds)])
    assert torch.equal(together, alone)
