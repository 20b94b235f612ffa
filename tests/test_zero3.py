"""ZeRO-3 against ZeRO-2 against one process, as real runs (DeepSpeed on the CPU, gloo, 2 processes).

Under ZeRO-3 each rank holds a shard of every parameter; the body and the fused LM head must run
inside the forward DeepSpeed's hooks see (``LogprobModel`` through the engine), scoring must run the
same forwards on every rank, and checkpoints must gather the shards. If any of that were wrong the
runs below would fail outright (an empty shard in a matmul) or drift from the one-process run.
The dpo ZeRO-2 run is launched as two "nodes" of one process each on loopback (torchrun
``--nnodes 2``), node 1 given a cache directory of its own that must stay untouched.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from same_training import assert_same_steps, assert_same_weights, logged_steps
from spot_fast.config import parse_config
from spot_fast.engine import adamw
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.train import load_policy

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "spot_fast" / "train.py")]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
COMMON = ["--max-steps", "4", "--log-every", "1", "--learning-rate", "1e-3", "--epochs", "1"]
# 4 pairs per step, split (one process, each of two processes): spot_bco one micro-batch per process;
# dpo 2 fixed micro-batches (gradient accumulation); pear micro-batches of one pair formed by a token
# budget (each pair forwards 85 to 93 tokens), so ZeRO-3 accumulates over micro-batches in two ways
SPLITS = {
    "spot_bco": (["--per-device-batch", "4", "--grad-accum", "1"], ["--per-device-batch", "2", "--grad-accum", "1"]),
    "dpo": (["--per-device-batch", "2", "--grad-accum", "2"], ["--per-device-batch", "1", "--grad-accum", "2"]),
    "pear": (["--per-device-batch", "4", "--grad-accum", "1", "--max-tokens-per-batch", "150"],
             ["--per-device-batch", "2", "--grad-accum", "1", "--max-tokens-per-batch", "150"]),
}
# each objective's ZeRO-3 run recomputes in another --gradient-checkpointing mode (the one-process and
# ZeRO-2 runs recompute nothing, auto on the CPU; spot_bco's resume from its ZeRO-3 checkpoint neither):
# ZeRO-3 gathers a layer's weights inside the checkpointed region, again in the recompute
CHECKPOINTING = {"spot_bco": "selective", "dpo": "on", "pear": "selective-half"}
STEP_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "grad_norm")
# token means, pooled over micro-batches and ranks by tokens: the same however a step's pairs are split
TOKEN_METRICS = ("chosen/nll", "chosen/entropy")
PEAR_TOKEN_METRICS = ("pear/weight_mean", "pear/log_ratio", "pear/abs_log_ratio")


def run(command):
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def run_two_nodes(command, node_cache_dirs):
    """``command`` (train.py and its options) on two torchrun "nodes" of one process each on
    loopback, node ``r`` with ``--cache-dir node_cache_dirs[r]``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
         "--master-addr", "127.0.0.1", "--master-port", str(port)] + command + ["--cache-dir", str(node_cache_dirs[rank])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for rank in (0, 1)]
    outputs = [launch.communicate(timeout=600) for launch in launches]
    for launch, (stdout, stderr) in zip(launches, outputs):
        assert launch.returncode == 0, f"{launch.args} failed:\n{stdout[-3000:]}\n{stderr[-5000:]}"


def weights(output_dir):
    return load_file(Path(output_dir) / "final" / "model.safetensors")


@pytest.fixture(scope="module", params=list(SPLITS))
def three_ways(request, tmp_path_factory):
    """The same 4 steps of 4 pairs: one process (4 pairs each), ZeRO-2 and ZeRO-3 on 2 processes (2
    each), in the micro-batches of ``SPLITS``. spot_bco measures a retain set (scoring with uneven
    shares: 7 batches on 2 ranks) and ZeRO-3 saves at step 2; dpo and pear evaluate held-out pairs at
    the end. pear's behaviour log-probs are the starting policy's, scored per token before the first
    step. The ZeRO-3 run counts its engine's forwards (``count_forwards.py``) and recomputes in the
    mode ``CHECKPOINTING`` gives the objective."""
    loss = request.param
    root = tmp_path_factory.mktemp(loss)
    extra = ["--loss", loss]
    if loss == "spot_bco":
        retain = root / "retain.jsonl"
        retain.write_text("".join((ASSETS / "retain.jsonl").read_text().splitlines(keepends=True)[:28]))
        extra += ["--retain-data", str(retain), "--retain-every", "2"]
    else:
        extra += ["--eval-data", str(ASSETS / "eval_pairs.jsonl")]
    cache = ["--cache-dir", str(root / "cache")]
    one_split, two_split = SPLITS[loss]
    run(TRAIN + COMMON + extra + cache + one_split + ["--output-dir", str(root / "one")])
    options = COMMON + extra + two_split
    two = [str(REPO / "spot_fast" / "train.py")] + options
    if loss == "dpo":
        run_two_nodes(two + ["--zero-stage", "2", "--output-dir", str(root / "zero2")],
                      [root / "cache-zero2", root / "node-1-cache"])
    else:
        run(TORCHRUN + two + cache + ["--zero-stage", "2", "--output-dir", str(root / "zero2")])
    counted = [str(REPO / "tests" / "helpers" / "count_forwards.py"), str(root / "forwards")] + options
    run(TORCHRUN + counted + cache + ["--zero-stage", "3", "--save-every", "2", "--gradient-checkpointing", CHECKPOINTING[loss],
                                      "--output-dir", str(root / "zero3")])
    return loss, root, TORCHRUN + two + cache


def test_zero3_and_zero2_match_one_process_at_every_step(three_ways):
    """Loss, rewards and margin (pear: the loss, weights and log-ratios), token metrics and grad norm
    at each of 4 steps to 1e-5, and the final weights to float noise (as test_train.py's 2-vs-1-process
    test: Adam turns reassociation noise on near-zero gradients into steps of up to lr)."""
    loss, root, _ = three_ways
    keys, moved = (((("loss", "grad_norm") + PEAR_TOKEN_METRICS), "pear/abs_log_ratio") if loss == "pear"
                   else (STEP_METRICS, "rewards/margin"))
    keys += TOKEN_METRICS
    one = logged_steps(root / "one")
    assert [r["step"] for r in one] == [1, 2, 3, 4]
    assert one[-1][moved] != one[0][moved]  # it trained
    for stage in ("zero2", "zero3"):
        assert_same_steps(logged_steps(root / stage), one, keys, context=(stage, f"micro-batches {SPLITS[loss]}"))
        assert_same_weights(weights(root / stage), weights(root / "one"), bound=1e-3 * 4, context=(stage,))


def test_the_engine_forward_runs_once_per_micro_batch(three_ways):
    """ZeRO-3 learns where the gradient accumulation boundary is in hooks of the engine's forward: a
    training forward through ``engine.module`` trains wrongly with several micro-batches per step."""
    loss, root, _ = three_ways
    for rank in (0, 1):
        steps = json.loads((root / f"forwards-rank{rank}.json").read_text())
        assert [s["step"] for s in steps] == [1, 2, 3, 4]
        assert all(s["micro_batches"] == (1 if loss == "spot_bco" else 2) for s in steps), steps
        for s in steps:
            assert s["engine_forwards"] == s["micro_batches"], (
                f"rank {rank} step {s['step']}: the engine's forward ran {s['engine_forwards']} times for "
                f"{s['micro_batches']} micro-batches; each training forward must call the engine")


def test_two_nodes_need_the_log_prob_cache_on_node_0_only(three_ways):
    """The dpo ZeRO-2 run was two loopback nodes (it matched one process above): rank 0 wrote the
    reference cache, node 1 never created its cache directory."""
    loss, root, _ = three_ways
    if loss != "dpo":
        pytest.skip("the two-node launch is the dpo ZeRO-2 run")
    kinds = sorted(p.name.rsplit("-", 1)[0] for p in (root / "cache-zero2").glob("*.pt"))
    assert kinds == ["reference", "reference", "reference-tokens"]  # train, eval sums, eval per-token (held-out KL)
    assert not (root / "node-1-cache").exists()


def test_zero3_scores_retain_and_evaluation_sets_like_one_process(three_ways):
    loss, root, _ = three_ways
    one = {r["step"]: r for r in map(json.loads, open(root / "one" / "metrics.jsonl"))}
    zero3 = {r["step"]: r for r in map(json.loads, open(root / "zero3" / "metrics.jsonl"))}
    keys = {"spot_bco": ("retain/nll", "retain/kl", "retain/kl_k3"), "dpo": ("eval/nll", "eval/rewards/margin"),
            "pear": ("eval/nll",)}[loss]
    steps = (0, 2, 4) if loss == "spot_bco" else (4,)
    for step in steps:
        for key in keys:
            assert zero3[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-6), (step, key)
    if loss == "spot_bco":
        assert one[4]["retain/kl_k3"] > 1e-4  # the policy moved, so equal values mean something


def test_zero3_checkpoint_is_a_consolidated_model_and_resumes_exactly(three_ways):
    loss, root, two = three_ways
    if loss != "spot_bco":
        pytest.skip("one resume (spot_bco: its reward shift is restored too) covers the mechanism")
    model = AutoModelForCausalLM.from_pretrained(root / "zero3" / "final")
    initial = load_model(BUILTIN_MODEL)
    for name, value in initial.state_dict().items():
        assert model.state_dict()[name].shape == value.shape, name  # full tensors, not shards
    assert not torch.equal(model.lm_head.weight, initial.lm_head.weight)

    run(two + ["--zero-stage", "3", "--resume", str(root / "zero3" / "checkpoint-2"),
               "--output-dir", str(root / "zero3-resumed")])
    uninterrupted = {r["step"]: r for r in logged_steps(root / "zero3")}
    resumed = logged_steps(root / "zero3-resumed")
    assert [r["step"] for r in resumed] == [3, 4]
    for row in resumed:
        for key in ("delta", *STEP_METRICS, "lr"):  # delta first: a lost reward shift is named as such
            assert row[key] == pytest.approx(uninterrupted[row["step"]][key], rel=1e-6, abs=1e-9), (
                f"step {row['step']} {key} after resuming differs from the uninterrupted run")
    expected, got = weights(root / "zero3"), weights(root / "zero3-resumed")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def rank_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    model_dir = root / "model"
    load_model(BUILTIN_MODEL).save_pretrained(model_dir)
    load_tokenizer(BUILTIN_MODEL).save_pretrained(model_dir)
    run(TORCHRUN + [str(REPO / "tests" / "helpers" / "zero_ranks.py"), str(model_dir), str(root)])
    return [json.loads((root / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def test_zero3_constructs_the_model_partitioned(rank_report):
    """Before any forward, every parameter of the built-in model and of a model directory loaded with
    from_pretrained is an empty placeholder and a local shard of ceil(numel / 2) elements, on both
    ranks; the shards hold the saved weights."""
    for report in rank_report:
        assert report["world"] == 2
        for name, parameters in report["shards"].items():
            assert len(parameters) > 10, name
            for parameter, (local, full, visible) in parameters.items():
                assert visible == 0, (name, parameter)
                assert local == report["expected_shard"][name][parameter] < full, (name, parameter)
        assert report["loaded_differences"] and max(report["loaded_differences"].values()) == 0


@pytest.mark.parametrize("stage", ["2", "3"])
def test_weight_decay_falls_on_the_parameters_one_process_decays(rank_report, stage, tmp_path):
    """AdamW decays the weight matrices only. Under ZeRO-3 a partitioned parameter is a flat shard
    (an empty 1-D placeholder), so the rule must read its full shape: the parameter groups the engine
    was built with (weight decay and whole element count, by parameter name) equal one process's on
    every rank."""
    from zero_ranks import weight_decay_by_name

    config = parse_config(["--output-dir", str(tmp_path / "unused")])
    policy = load_policy(BUILTIN_MODEL, config, torch.float32, torch.device("cpu"), "sdpa")
    one = weight_decay_by_name(policy, adamw(policy, config, config.learning_rate))
    decayed = lambda groups: sum(elements for decay, elements in groups.values() if decay > 0)  # noqa: E731
    assert decayed(one) > 0
    for rank, report in enumerate(rank_report):
        groups = report["weight_decay"][stage]
        differing = sorted(name for name in one.keys() | groups.keys() if one.get(name) != groups.get(name))
        assert not differing, (
            f"ZeRO-{stage} rank {rank}: weight decay or element count differs from one process for {differing}; "
            f"{decayed(groups)} elements decayed against {decayed(one)} in one process")


@pytest.mark.parametrize("stage", ["2", "3"])
def test_every_parameter_is_identical_on_both_ranks_after_a_step(rank_report, stage):
    """The silent no-sync failure: ranks that step with their own gradients diverge. After one step
    every parameter equals rank 0's exactly, and the step moved every parameter (so equality is not
    just two untouched copies)."""
    for report in rank_report:
        agreement = report["agreement"][stage]
        assert len(agreement) > 10
        for name, (difference, change) in agreement.items():
            assert difference == 0, (stage, name)
            assert change > 0, (stage, name)
