"""``benchmarks/bench_flops.py``: the FLOPs counter against the formulas on a small model (each
checkpointing mode's recompute included), the block-sparse and varlen attention counts against the
dense mask, and the whole benchmark at toy size."""
import json

import pytest
import torch

import bench_flops  # benchmarks/ (tests/conftest.py)
from spot_fast.attention import dense_mask
from spot_fast.batching import collate, common_prefix_length, pair_tokens


@pytest.fixture(scope="module")
def toy_config():
    return bench_flops.model_configs(toy=True)["toy-qwen3"]


def test_counter_agrees_with_the_formulas_on_a_small_shape(toy_config):
    """Body matmuls, dense attention, full checkpointing's recompute (selective-half's: the k, o and up
    projections; selective's: nothing the counter counts), the materialized head and the fused head
    (its backward accumulates with in-place addmm_, which the counter misses unless told)."""
    check = bench_flops.cross_check(toy_config)
    for part in ("body matmuls", "attention", "recompute", "recompute (selective-half)", "materialized head", "fused head"):
        assert check[part]["counted"] == check[part]["formula"] > 0, part
    assert check["recompute (selective)"]["counted"] == 0 == check["recompute (selective)"]["formula"]
    assert check["recompute (selective-half)"]["counted"] < check["recompute"]["counted"]


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
    recipe, sdpa, flex, varlen = (jobs[name] for name in ("recipe (TRL 0.20)", "spot-fast (SDPA)", "spot-fast (flex)",
                                                                "spot-fast (varlen)"))
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

    # varlen computes exactly the visible entries of each tree, at the dense entry's counted cost, and no mask
    rates = report["models"]["toy-qwen3"]["rates"]
    visible = sum(bench_flops.visible_entries(*(getattr(collate([p], pack=True, pad_id=0, share_prefix=True), ids)
                                                for ids in ("doc_ids", "branch_ids")))[0] for p in pairs) / len(pairs)
    per_entry = rates["attention"]
    assert varlen["per_pair"]["attention"] == pytest.approx(visible * (per_entry["forward"] + per_entry["backward"]))
    assert varlen["per_pair"]["attention"] < flex["per_pair"]["attention"] < sdpa["per_pair"]["attention"]
    assert varlen["waste_per_pair"]["attention on masked entries"] == 0 == varlen["waste_per_pair"]["mask build (elements)"]
    # the modes change the recompute alone: on's is the counted per-token and per-entry rates of full
    # recompute; selective's is none the counter sees (elementwise ops only), selective-half's in between
    modes = {mode: jobs[name] for name, mode in (("spot-fast (varlen)", "on"), ("spot-fast (varlen, selective)", "selective"),
                                                ("spot-fast (varlen, selective-half)", "selective-half"),
                                                ("spot-fast (varlen, no recompute)", "off"))}
    for job in modes.values():
        assert {k: v for k, v in job["per_pair"].items() if k != "recompute"} == {
            k: v for k, v in varlen["per_pair"].items() if k != "recompute"}
    forwarded = varlen["tokens_per_pair"]["forwarded"]
    assert modes["on"]["per_pair"]["recompute"] == pytest.approx(
        rates["matmul"]["recompute on"] * forwarded + per_entry["recompute on"] * visible)
    assert modes["selective"]["per_pair"]["recompute"] == 0 == modes["off"]["per_pair"]["recompute"]
    assert 0 < modes["selective-half"]["per_pair"]["recompute"] < modes["on"]["per_pair"]["recompute"]
    assert modes["selective"]["job_total"] < modes["on"]["job_total"]

