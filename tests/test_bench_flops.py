"""``benchmarks/bench_flops.py``: the FLOPs counter against the formulas on a small model, the
block-sparse attention count against the dense mask, and the whole benchmark at toy size."""
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_flops  # noqa: E402

from spot_fast.attention import dense_mask  # noqa: E402
from spot_fast.batching import collate, common_prefix_length, pair_tokens  # noqa: E402


@pytest.fixture(scope="module")
def toy_config():
    return bench_flops.model_configs(toy=True)["toy-qwen3"]


def test_counter_agrees_with_the_formulas_on_a_small_shape(toy_config):
    """Body matmuls, dense attention, checkpointing's recompute, the materialized head and the fused
    head (its backward accumulates with in-place addmm_, which the counter misses unless told)."""
    check = bench_flops.cross_check(toy_config)
    for part in ("body matmuls", "attention", "recompute", "materialized head", "fused head"):
        assert check[part]["counted"] == check[part]["formula"] > 0, part


@pytest.mark.parametrize("pack, share", [(True, True), (False, False), (True, False)])
def test_block_and_entry_counts_are_those_of_the_dense_mask(pack, share):
    """Visible entries, and blocks holding one: trees packed in a row, padded sequences (padding sees
    only itself) and packed sequences, at a block size that leaves a partial last block."""
    pairs = bench_flops.SpotLike(prompt_median=12, answer_median=30, max_length=96, seed=3).pairs(5)
    batch = collate(pairs, pack=pack, pad_id=0, share_prefix=share)
    block = 8
    mask = dense_mask(batch)[:, 0]
    rows, length = batch.doc_ids.shape
    blocks = -(-length // block)
    padded = torch.zeros(rows, blocks * block, blocks * block, dtype=torch.bool)
    padded[:, :length, :length] = mask
    expected = padded.reshape(rows, blocks, block, blocks, block).any(dim=(2, 4)).sum(dim=(1, 2)).tolist()
    assert bench_flops.nonempty_blocks(batch.doc_ids, batch.branch_ids, block) == expected
    assert bench_flops.visible_entries(batch.doc_ids, batch.branch_ids) == mask.sum(dim=(1, 2)).tolist()
    assert sum(expected) < rows * blocks * blocks  # masked blocks exist: the count can tell them apart


def test_toy_benchmark_accounts_for_every_pair(tmp_path):
    report = bench_flops.main(["--toy", "--out", str(tmp_path / "flops")])
    assert json.loads((tmp_path / "flops.json").read_text())["models"].keys() == {"toy-qwen3"}
    assert "| toy-qwen3 | SPoT-like synthetic | spot-fast (SDPA) |" in (tmp_path / "flops.md").read_text()
    config = bench_flops.model_configs(toy=True)["toy-qwen3"]
    pairs = bench_flops.SpotLike(prompt_median=20, answer_median=150, max_length=1024).pairs(8)
    jobs = report["models"]["toy-qwen3"]["jobs"]["SPoT-like synthetic"]
    recipe, sdpa, flex = (jobs[name] for name in bench_flops.LAYOUTS)
    # trees forward each pair's prompt and common prefix once; the recipe pads its two sequences
    assert sdpa["tokens_per_pair"]["forwarded"] == sum(pair_tokens(p, True) for p in pairs) / len(pairs)
    assert recipe["tokens_per_pair"]["forwarded"] == sum(
        2 * (len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))) for p in pairs) / len(pairs)
    # the fused head scores completion tokens (shared ones once); the recipe's head sees every position
    scored = sum(len(p.chosen_ids) + len(p.rejected_ids) - common_prefix_length(p.chosen_ids, p.rejected_ids)
                 for p in pairs) / len(pairs)
    assert sdpa["per_pair"]["LM head"] == pytest.approx(bench_flops.fused_head_formula(scored, config))
    assert recipe["per_pair"]["LM head"] == pytest.approx(
        6 * recipe["tokens_per_pair"]["forwarded"] * config.hidden_size * config.vocab_size)
    assert flex["per_pair"]["body matmuls"] == sdpa["per_pair"]["body matmuls"] < recipe["per_pair"]["body matmuls"]
    assert recipe["waste_per_pair"]["padding"] > 0 == sdpa["waste_per_pair"]["padding"]
    for job in jobs.values():
        assert job["job_total"] == pytest.approx(job["per_pair_total"] * 4000 * 2 + job["reference_per_pair"] * 4000)

