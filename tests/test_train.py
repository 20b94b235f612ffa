"""The trainer: losses on a fixed batch, end-to-end runs (1 and 2 processes), resume, cache, bad input.

The end-to-end runs are real subprocesses (DeepSpeed, gloo) on the built-in tiny model; three of them
are shared by several tests through module fixtures to keep the suite fast on two cores.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

from spot_fast import train as train_module
from spot_fast.checkpoint import has_engine_state
from spot_fast.config import TrainConfig
from spot_fast.batching import collate, pair_tokens
from spot_fast.data import DataError, completion_ids, load_pairs
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.logprob_head import batch_logps, install_logprob_head
from spot_fast.objective import Objective, micro_batch_loss
from spot_kernels import LOSS_KINDS, RewardShift, pear_loss

from hf_logps import hf_token_logps, perturbed
from same_training import assert_same_steps, assert_same_weights, logged_steps

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "spot_fast" / "train.py")]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(REPO / "spot_fast" / "train.py")]
COMMON = ["--max-steps", "4", "--grad-accum", "1", "--log-every", "1", "--learning-rate", "1e-3", "--epochs", "1"]
RETAIN = ["--retain-every", "2"]  # with --retain-data: the fixtures write 28 lines (2 ranks x 4 per batch: 7 batches)


def hf_sequence_logps(model, prompt, completion):
    return hf_token_logps(model, prompt, completion).sum()


@pytest.mark.parametrize("loss", LOSS_KINDS)
def test_micro_batch_loss_equals_direct_computation(loss):
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "pairs.jsonl", tokenizer, 8192)[0][:3]
    reference_model = load_model(BUILTIN_MODEL)
    policy = install_logprob_head(perturbed(load_model(BUILTIN_MODEL)))  # rewards must not all be zero
    policy_copy = load_model(BUILTIN_MODEL)
    policy_copy.load_state_dict(policy.state_dict())
    ref = torch.tensor([[float(hf_sequence_logps(reference_model, p.prompt_ids, c)) for c in (p.chosen_ids, p.rejected_ids)]
                        for p in pairs])
    batch = collate(pairs, pack=True, pad_id=tokenizer.pad_token_id)
    got, metrics, _ = micro_batch_loss(batch_logps(policy, batch), batch, ref, Objective(loss, 0.1, RewardShift()))

    with torch.no_grad():
        chosen = torch.stack([hf_sequence_logps(policy_copy, p.prompt_ids, p.chosen_ids) for p in pairs])
        rejected = torch.stack([hf_sequence_logps(policy_copy, p.prompt_ids, p.rejected_ids) for p in pairs])
    r_chosen, r_rejected = 0.1 * (chosen - ref[:, 0].double()), 0.1 * (rejected - ref[:, 1].double())
    logsig = torch.nn.functional.logsigmoid
    delta = torch.cat([r_chosen, r_rejected]).mean()  # update-then-use: the first batch's own mean
    expected = {
        "sft": -chosen / torch.tensor([len(p.chosen_ids) for p in pairs]),
        "reward_sft": -logsig(r_chosen),
        "dpo": -logsig(r_chosen - r_rejected),
        "spot_bce": -logsig(r_chosen) - logsig(-r_rejected),
        "spot_bco": -logsig(r_chosen - delta) - logsig(-(r_rejected - delta)),
    }[loss].mean()
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    if loss == "spot_bco":
        assert float(metrics["delta"]) == pytest.approx(float(delta), abs=1e-5)


@pytest.mark.parametrize("level, pack", [("token", True), ("block", False), ("sequence", True)])
def test_pear_micro_batch_loss_equals_direct_computation(level, pack):
    """The trainer's PEAR loss equals pear_loss on per-token log-probs from the models' own logits: the
    behaviour log-probs line up with the policy's tokens, in two batches, packed or padded (the
    formulas themselves: test_pear.py). Pairs are given in a shuffled order, as the trainer does."""
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "pairs.jsonl", tokenizer, 8192, with_rejected=False)[0][:5][::-1]
    assert all(p.rejected_ids is None for p in pairs)
    behavior_model = load_model(BUILTIN_MODEL)
    for pair in pairs:
        pair.behavior_logps = hf_token_logps(behavior_model, pair.prompt_ids, pair.chosen_ids).float()
    policy = install_logprob_head(perturbed(load_model(BUILTIN_MODEL), scale=0.005))
    policy_copy = load_model(BUILTIN_MODEL)
    policy_copy.load_state_dict(policy.state_dict())
    config = TrainConfig(loss="pear", pear_level=level, pear_block_size=16)
    for batch_pairs in (pairs[:3], pairs[3:]):
        batch = collate(batch_pairs, pack=pack, pad_id=tokenizer.pad_token_id)
        assert batch.num_sequences == len(batch_pairs)
        got, metrics, _ = micro_batch_loss(batch_logps(policy, batch), batch, None, Objective("pear", pear=config.pear()))

        policy_tokens = torch.cat([hf_token_logps(policy_copy, p.prompt_ids, p.chosen_ids) for p in batch_pairs])
        behavior_tokens = torch.cat([p.behavior_logps for p in batch_pairs])
        seq_index = torch.cat([torch.full((len(p.chosen_ids),), i) for i, p in enumerate(batch_pairs)])
        per_example, weights = pear_loss(policy_tokens, behavior_tokens, seq_index, len(batch_pairs), config.pear())
        assert float(got.detach()) == pytest.approx(float(per_example.mean()), rel=1e-4)
        assert float(metrics["pear/weight_mean"]) == pytest.approx(float(weights.mean()), rel=1e-4)
        expected_abs = (policy_tokens - behavior_tokens).abs().mean()
        assert float(metrics["pear/abs_log_ratio"]) == pytest.approx(float(expected_abs), rel=1e-3)
        assert expected_abs > 0.005  # the policy differs from the behaviour model
        got.backward()
        assert policy.lm_head.weight.grad.abs().sum() > 0


def run(command, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def retain_file(root):
    path = root / "retain.jsonl"
    path.write_text("".join((ASSETS / "retain.jsonl").read_text().splitlines(keepends=True)[:28]))
    return ["--retain-data", str(path)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: 1 process, 4 pairs per step, checkpoint at step 2. B: resumes A from step 2, reusing A's caches,
    and keeps the optimizer state in final/ (an option a resume may add). C: 2 processes x 2 pairs per
    step (the same global batch as A), computing its own caches."""
    root = tmp_path_factory.mktemp("runs")
    retain = retain_file(root)
    common = COMMON + RETAIN + retain + ["--cache-dir", str(root / "cache")]
    a = run(TRAIN + common + ["--per-device-batch", "4", "--save-every", "2", "--output-dir", str(root / "a"),
                              "--eval-data", str(ASSETS / "eval_pairs.jsonl")])
    b = run(TRAIN + common + ["--per-device-batch", "4", "--resume", str(root / "a" / "checkpoint-2"),
                              "--output-dir", str(root / "b"), "--save-optimizer-in-final"])
    c = run(TORCHRUN + COMMON + RETAIN + retain + ["--cache-dir", str(root / "cache-c"), "--per-device-batch", "2",
                                                   "--output-dir", str(root / "c")])
    return root, a, b, c


def test_run_saves_a_loadable_model_metrics_and_plot(runs):
    root, a, _, _ = runs
    final = root / "a" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    initial = load_model(BUILTIN_MODEL)
    assert not torch.equal(model.lm_head.weight, initial.lm_head.weight)  # it trained
    assert (root / "a" / "training.png").stat().st_size > 0
    rows = logged_steps(root / "a")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "delta",
                "grad_norm", "lr", "tokens_per_s", "padding_fraction"):
        assert key in rows[0]
    assert rows[0]["padding_fraction"] == 0.0  # packed
    # the logged rate is the one each step trained with: transformers' schedule at step k - 1 (0 first)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=1, num_training_steps=4)
    used = []
    for _ in rows:
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert [r["lr"] for r in rows] == pytest.approx(used, rel=1e-9) and used[0] == 0 and used[-1] > 0
    assert not list(root.glob("a/.tmp-*"))  # no partial checkpoint left
    assert "reference log-probs of pairs.jsonl computed" in a.stdout


def block(output, title):
    """The lines of the summary block that starts with ``title`` (its indented lines), as name -> text."""
    lines = output.splitlines()
    rows = lines[lines.index(title) + 1:]
    rows = rows[:next((i for i, line in enumerate(rows) if not line.startswith("  ")), len(rows))]
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in rows)


def test_the_run_says_what_it_will_do_and_what_it_did(runs):
    """One start block (after the data is read; what auto chose and why) and one end block (time,
    tokens/s, final metrics, every output); none of DeepSpeed's accelerator and op-build lines."""
    root, a, _, _ = runs
    output = a.stdout + a.stderr
    start = block(a.stdout, "run:")
    assert {"model", "devices", "data", "tokens", "batch", "steps", "attention", "LM head", "Liger", "metrics"} <= set(start)
    assert start["model"].startswith(BUILTIN_MODEL) and start["devices"].startswith("1 process(es), cpu")
    assert start["data"].startswith("240 pairs from ") and "left out per epoch" in start["data"]
    tokens = re.fullmatch(r"([\d,]+) forwarded per epoch with pair trees, ([\d,]+) without: shared-prefix ratio ([\d.]+)%",
                          start["tokens"])
    pairs = load_pairs(ASSETS / "pairs.jsonl", load_tokenizer(BUILTIN_MODEL), 8192)[0]
    with_trees, without = (sum(pair_tokens(p, share) for p in pairs) for share in (True, False))
    assert tokens and int(tokens[1].replace(",", "")) == with_trees and int(tokens[2].replace(",", "")) == without
    assert float(tokens[3]) == pytest.approx(100 * (1 - with_trees / without), abs=0.05) and with_trees < without
    assert start["batch"].startswith("4 pairs per optimizer step = 4 per device x 1 accumulated x 1 process(es)")
    assert start["steps"].startswith("4 optimizer steps")
    assert start["attention"].startswith("sdpa (auto") and start["LM head"].startswith("chunked (auto")
    assert a.stdout.index("run:") < a.stdout.index("reference log-probs of pairs.jsonl")  # before the work
    end = block(a.stdout, "done:")
    assert re.fullmatch(r"[\d.]+ s wall, [\d.]+ s in training steps 1-4", end["time"]), end["time"]
    rows = [r for r in logged_steps(root / "a")]
    forwarded = sum(r["tokens/forwarded"] for r in rows)
    assert end["tokens/s"].endswith(f"({forwarded:,} tokens forwarded)")
    assert end["final"].startswith(f"step 4: loss {rows[-1]['loss']:.4g}, rewards/margin") and "eval/nll" in end["final"]
    assert end["model"] == f"model saved to {root / 'a' / 'final'}"
    assert end["checkpoints"] == str(root / "a" / "checkpoint-2") and end["metrics"] == str(root / "a" / "metrics.jsonl")
    assert end["plot"] == str(root / "a" / "training.png")
    if (root / "a" / "config.yaml").exists():
        assert end["config"] == str(root / "a" / "config.yaml")
    for noise in ("Setting accelerator to CPU", "built successfully"):
        assert noise not in output


def test_evaluation_at_the_end_equals_the_models_own_logits(runs):
    """--eval-data: held-out NLL per chosen token and implicit rewards of the final model, against the
    same numbers from materialized logits of the saved model and the starting model."""
    root, _, _, _ = runs
    [row] = [json.loads(line) for line in open(root / "a" / "metrics.jsonl") if "eval/nll" in line]
    assert row["step"] == 4
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "eval_pairs.jsonl", tokenizer, 8192)[0]
    final, start = AutoModelForCausalLM.from_pretrained(root / "a" / "final"), load_model(BUILTIN_MODEL)
    logps = {name: torch.stack([torch.stack([hf_sequence_logps(model, p.prompt_ids, ids) for ids in (p.chosen_ids, p.rejected_ids)])
                                for p in pairs]) for name, model in (("final", final), ("start", start))}
    nll = -float(logps["final"][:, 0].sum()) / sum(len(p.chosen_ids) for p in pairs)
    rewards = 0.1 * (logps["final"] - logps["start"])
    assert row["eval/nll"] == pytest.approx(nll, rel=1e-4)
    assert row["eval/rewards/chosen"] == pytest.approx(float(rewards[:, 0].mean()), abs=1e-4)
    assert row["eval/rewards/margin"] == pytest.approx(float((rewards[:, 0] - rewards[:, 1]).mean()), abs=1e-4)
    assert abs(row["eval/rewards/margin"]) > 1e-3  # it trained, so the rewards moved
    # KL(pi_ref || pi_theta) per chosen token, k1 and k3 (forgetting.retain's estimators), and the objective's loss
    # with the run's final reward shift
    log_r = torch.cat([hf_token_logps(final, p.prompt_ids, p.chosen_ids) - hf_token_logps(start, p.prompt_ids, p.chosen_ids)
                       for p in pairs])
    assert row["eval/kl"] == pytest.approx(float(-log_r.mean()), rel=1e-3, abs=1e-6)
    assert row["eval/kl_k3"] == pytest.approx(float((log_r.exp() - 1 - log_r).mean()), rel=1e-3)
    assert row["eval/kl_k3"] > 1e-4
    delta = json.loads((root / "a" / "final" / "trainer_state.json").read_text())["reward_shift"]["mean"]
    loss = -(torch.nn.functional.logsigmoid(rewards[:, 0] - delta) + torch.nn.functional.logsigmoid(-(rewards[:, 1] - delta)))
    assert row["eval/loss"] == pytest.approx(float(loss.mean()), rel=1e-4)


def test_resume_continues_exactly(runs):
    root, _, b, _ = runs
    uninterrupted = {r["step"]: r for r in logged_steps(root / "a")}
    resumed = logged_steps(root / "b")
    assert [r["step"] for r in resumed] == [3, 4]
    for row in resumed:
        for key in ("delta", "loss", "rewards/chosen", "rewards/rejected", "lr"):  # delta first: a lost reward shift is named as such
            assert row[key] == pytest.approx(uninterrupted[row["step"]][key], rel=1e-6, abs=1e-9), (
                f"step {row['step']} {key} after resuming differs from the uninterrupted run")
    assert "reference log-probs of pairs.jsonl reused" in b.stdout
    weights_a = load_file(root / "a" / "final" / "model.safetensors")
    weights_b = load_file(root / "b" / "final" / "model.safetensors")
    assert all(torch.allclose(weights_a[k], weights_b[k], atol=1e-6) for k in weights_a)


def test_a_final_with_the_optimizer_state_trains_on_with_more_steps(runs, capsys):
    """B's final/ keeps the optimizer state: --resume latest has nothing left to train at the same
    --max-steps (said), and with a larger one trains on from final/ (a copy of B)."""
    root, _, _, _ = runs
    assert has_engine_state(root / "b" / "final") and not has_engine_state(root / "a" / "final")
    resume = COMMON + ["--cache-dir", str(root / "cache"), "--per-device-batch", "4", "--resume", "latest"]
    assert train_module.main(resume + ["--output-dir", str(root / "b")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"{root / 'b'}: the run finished at step 4 of 4; nothing left to train, {root / 'b' / 'final'} is left as "
        f"it is (it holds the optimizer state: a larger --max-steps trains on)")
    shutil.copytree(root / "b", root / "b-more")
    more = run(TRAIN + resume + ["--output-dir", str(root / "b-more"), "--max-steps", "5"])
    assert f"resumed from {root / 'b-more' / 'final'} at step 4" in more.stdout
    assert [r["step"] for r in logged_steps(root / "b-more")] == [3, 4, 5]
    assert json.loads((root / "b-more" / "final" / "trainer_state.json").read_text())["step"] == 5
    assert not has_engine_state(root / "b-more" / "final")  # not asked for again


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    """Gradients are averaged over ranks and delta over all ranks' rewards, so 2 x 2 pairs equals
    1 x 4 pairs up to float reassociation; token metrics are pooled over the ranks' tokens, so they
    are the same means too. Tolerances: loss, delta, margin, grad norm 1e-5 (rel or abs) at
    every step; weights after 4 steps within 1e-5 for at least 99.9% of elements. The rest are
    elements whose gradient is at float-noise level, where Adam's m / sqrt(v) turns reassociation
    noise into a step of up to +-lr; they must still differ by less than lr * steps."""
    root, _, _, c = runs
    assert_same_steps(logged_steps(root / "c"), logged_steps(root / "a"),
                      ("loss", "delta", "grad_norm", "rewards/margin", "chosen/nll", "chosen/entropy"))
    assert_same_weights(load_file(root / "c" / "final" / "model.safetensors"),
                        load_file(root / "a" / "final" / "model.safetensors"), bound=1e-3 * 4)


def test_two_processes_compute_the_same_caches_as_one(runs):
    """With 2 processes each scores half of the data and rank 0 joins the halves in order."""
    root, _, _, c = runs
    assert "reference log-probs of pairs.jsonl computed on 2 process(es)" in c.stdout
    assert "retain-reference log-probs of retain.jsonl computed on 2 process(es)" in c.stdout
    for what in ("reference", "retain-reference"):
        [two] = (root / "cache-c").glob(f"{what}-*.pt")
        one = root / "cache" / two.name  # the same key: run A computed it too (besides its eval reference)
        values_one = torch.load(one, weights_only=True)["logps"]
        values_two = torch.load(two, weights_only=True)["logps"]
        assert values_one.shape == values_two.shape and values_one.shape[0] > 32
        torch.testing.assert_close(values_two, values_one, rtol=1e-5, atol=1e-5)


def retain_rows(output_dir):
    rows = [json.loads(line) for line in open(Path(output_dir) / "metrics.jsonl")]
    return {r["step"]: r for r in rows if "retain/kl" in r}


def test_forgetting_signals_are_logged_and_agree_across_world_sizes(runs):
    """Retain metrics at step 0 (KL exactly 0: the cache holds the starting model's log-probs, read
    back token for token), every 2 steps and at the end; with 2 processes each measures half the
    batches and they sum, which must give the 1-process values."""
    root, a, _, _ = runs
    assert "retain-reference log-probs of retain.jsonl computed" in a.stdout
    one, two = retain_rows(root / "a"), retain_rows(root / "c")
    assert sorted(one) == sorted(two) == [0, 2, 4]
    assert one[0]["retain/kl"] == pytest.approx(0, abs=1e-6) and one[0]["retain/kl_k3"] == pytest.approx(0, abs=1e-9)
    assert one[4]["retain/kl_k3"] > 1e-4  # it trained, so it moved away from the start
    assert one[4]["retain/nll"] - one[0]["retain/nll"] == pytest.approx(one[4]["retain/kl"], abs=1e-6)  # k1 = NLL change
    for step in (2, 4):
        for key in ("retain/nll", "retain/kl", "retain/kl_k3"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert 4 in retain_rows(root / "b") and 0 not in retain_rows(root / "b")  # a resumed run does not restart at 0


@pytest.fixture(scope="module")
def pear_runs(tmp_path_factory):
    """D: PEAR (block level) with the starting policy as behaviour policy, with retain signals.
    E: PEAR (sequence level) with a separate behaviour model directory."""
    root = tmp_path_factory.mktemp("pear")
    common = COMMON + ["--loss", "pear", "--per-device-batch", "4", "--cache-dir", str(root / "cache")]
    d = run(TRAIN + common + RETAIN + retain_file(root) + ["--pear-level", "block", "--pear-block-size", "8", "--output-dir", str(root / "d")])
    behavior = perturbed(load_model(BUILTIN_MODEL), scale=0.05)
    behavior.save_pretrained(root / "behavior")
    load_tokenizer(BUILTIN_MODEL).save_pretrained(root / "behavior")
    e = run(TRAIN + common + ["--pear-level", "sequence", "--behavior-model", str(root / "behavior"),
                              "--output-dir", str(root / "e")])
    return root, d, e


def test_pear_trains_with_the_starting_policy_as_behaviour(pear_runs):
    root, d, _ = pear_runs
    assert "behaviour log-probs of pairs.jsonl computed" in d.stdout
    assert "0 left out per epoch" in d.stdout and "240 examples" in d.stdout  # SFT data: no rejected side read
    rows = logged_steps(root / "d")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # Step 1 runs before any update, so the policy is the behaviour policy: every log-ratio is 0 (up to
    # float noise from batching), token by token, so the weights are gamma^(T - end) <= 1, none clipped.
    assert rows[0]["pear/abs_log_ratio"] < 1e-4
    assert 0.999 ** 200 < rows[0]["pear/weight_mean"] < 1
    assert rows[0]["pear/weight_at_min"] == rows[0]["pear/weight_at_max"] == 0
    assert rows[-1]["pear/abs_log_ratio"] > 1e-3 and rows[-1]["pear/weight_mean"] != rows[0]["pear/weight_mean"]
    assert rows[-1]["chosen/nll"] < rows[0]["chosen/nll"]  # SFT lowers the NLL of the data
    assert "rewards/chosen" not in rows[0]
    assert sorted(retain_rows(root / "d")) == [0, 2, 4]
    assert (root / "d" / "training.png").stat().st_size > 0


def test_pear_reads_a_behaviour_model(pear_runs):
    root, _, e = pear_runs
    assert "behaviour log-probs of pairs.jsonl computed" in e.stdout
    assert list((root / "cache").glob("behaviour-*.pt"))
    first = logged_steps(root / "e")[0]
    assert first["pear/abs_log_ratio"] > 1e-2  # measured against the other model, not the policy itself


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


GOOD = json.dumps({"question": "1+1?", "chosen": "2", "rejected": "3"})


@pytest.mark.parametrize("lines, message, loss", [
    ([GOOD, '{"question": "2+2?", "chosen": "4", '], r"bad\.jsonl:2: invalid JSON", "spot_bco"),
    ([GOOD, json.dumps({"question": "x", "chosen": "y"})],
     r"bad\.jsonl:2: missing field: expected one of 'original_answer', 'rejected'", "spot_bco"),
    ([json.dumps({"question": "x", "chosen": " ", "rejected": "y"})], r"bad\.jsonl:1: field 'chosen' is empty", "spot_bco"),
    ([], r"bad\.jsonl: no usable pairs", "spot_bco"),
    ([json.dumps({"question": "x " * 500, "chosen": "y", "rejected": "z"})],
     r"no usable pairs \(1 prompts longer than max_length 64\)", "spot_bco"),
    ([GOOD, json.dumps({"question": [{"role": "user", "content": 7}], "chosen": "y", "rejected": "z"})],
     r"bad\.jsonl:2: field 'question', message 1: 'content' must be a string; got int", "spot_bco"),
    ([json.dumps({"question": [{"role": "system", "content": "s"}, {"role": "wizard", "content": "x"}],
                  "chosen": "y", "rejected": "z"})],
     r"bad\.jsonl:1: field 'question', message 2: role 'wizard' is not one of \['system', 'user', 'assistant'\]",
     "spot_bco"),
    ([json.dumps({"question": "x", "chosen": [{"role": "assistant", "content": None}], "rejected": "z"})],
     r"bad\.jsonl:1: field 'chosen', message 1: 'content' must be a string; got NoneType", "spot_bco"),
    ([json.dumps({"question": "x", "response": "y", "behavior_logps": "x"})],
     r"bad\.jsonl:1: field 'behavior_logps' must be a list of numbers", "pear"),
    ([json.dumps({"question": "x", "response": "y", "behavior_logps": [-0.5]})],
     r"bad\.jsonl:1: field 'behavior_logps' has 1 values but the chosen completion has \d+ tokens", "pear"),
    ([json.dumps({"question": "x", "response": "y", "behavior_logps": [0.5]})],
     r"bad\.jsonl:1: field 'behavior_logps' must hold finite log-probs <= 0", "pear"),
])
def test_bad_data_is_reported_with_file_and_line(tmp_path, capsys, lines, message, loss):
    data = write_lines(tmp_path / "bad.jsonl", lines)
    code = train_module.main(["--data", data, "--output-dir", str(tmp_path / "out"), "--max-length", "64", "--loss", loss])
    assert code == 1
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_error_under_torchrun_is_printed_once(tmp_path):
    """Both ranks read the same bad file: rank 0 reports it, and torchrun stops the other rank while it
    waits to report it too."""
    data = write_lines(tmp_path / "bad.jsonl", [json.dumps({"question": "x"})])
    result = subprocess.run(TORCHRUN + ["--data", data, "--output-dir", str(tmp_path / "out")], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert result.returncode != 0
    assert (result.stdout + result.stderr).count("bad.jsonl:1: missing field") == 1, result.stderr[-3000:]


def test_an_error_of_another_rank_alone_is_reported(tmp_path, capsys, monkeypatch):
    """A rank other than 0 reports its error after the wait (rank 0 may not have it, e.g. a file missing
    on one node)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(train_module, "OTHER_RANKS_WAIT_S", 0)
    data = write_lines(tmp_path / "bad.jsonl", [json.dumps({"question": "x"})])
    assert train_module.main(["--data", data, "--output-dir", str(tmp_path / "out")]) == 1
    assert "bad.jsonl:1: missing field" in capsys.readouterr().err


def test_tool_messages_are_read_where_the_chat_template_renders_them(tmp_path):
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    tool_turn = {"question": [{"role": "user", "content": "1+1?"}, {"role": "tool", "content": "2"}],
                 "chosen": "2", "rejected": "3"}
    path = write_lines(tmp_path / "tool.jsonl", [json.dumps(tool_turn)])
    with pytest.raises(DataError, match="role 'tool' is not one of"):
        load_pairs(path, tokenizer, 64)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{{- '<|im_start|>' + message['role']",
        "{%- if message['role'] == 'tool' %}{{- '<tool_response>' }}{%- endif %}{{- '<|im_start|>' + message['role']")
    pair = load_pairs(path, tokenizer, 64)[0][0]
    assert "<tool_response>" in tokenizer.decode(pair.prompt_ids)


def test_missing_model_and_unknown_loss(tmp_path, capsys):
    assert train_module.main(["--model", str(tmp_path / "no-such-model"), "--data", str(ASSETS / "pairs.jsonl"),
                              "--output-dir", str(tmp_path / "out")]) == 1
    assert "no-such-model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(["--loss", "ipo"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ipo'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sft_style_data_with_behaviour_logps(tmp_path, capsys):
    """prompt + response lines (no rejected) with per-token behaviour log-probs: read, truncated with
    their completion, batched in token order; a file that gives them on some lines only is refused."""
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    n = len(completion_ids(tokenizer, "two"))
    line = {"prompt": "1+1?", "response": "two", "behavior_logps": [-0.25 * (i + 1) for i in range(n)]}
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps(line)] * 2)
    pairs = load_pairs(path, tokenizer, 64, with_rejected=False, with_behavior=True)[0]
    assert pairs[0].rejected_ids is None and pairs[0].behavior_logps.tolist() == line["behavior_logps"]
    assert load_pairs(path, tokenizer, 64, with_rejected=False)[0][0].behavior_logps is None  # read for PEAR only
    batch = collate(pairs, pack=True, pad_id=tokenizer.pad_token_id)
    assert batch.num_sequences == 2 and batch.targets.shape == batch.behavior_logps.shape == (2 * n,)
    assert batch.behavior_logps.tolist() == line["behavior_logps"] * 2
    truncated = load_pairs(path, tokenizer, len(pairs[0].prompt_ids) + 2, with_rejected=False, with_behavior=True)[0]
    assert truncated[0].behavior_logps.tolist() == line["behavior_logps"][:2] and len(truncated[0].chosen_ids) == 2

    mixed = write_lines(tmp_path / "mixed.jsonl", [json.dumps(line), json.dumps({"prompt": "1+1?", "response": "two"})])
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: field 'behavior_logps' is missing here but present on line 1"):
        load_pairs(mixed, tokenizer, 64, with_rejected=False, with_behavior=True)
    assert train_module.main(["--loss", "pear", "--data", path, "--behavior-model", BUILTIN_MODEL,
                              "--output-dir", str(tmp_path / "out")]) == 1
    assert "give one of the two" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--pear-gamma", "0"], "PEAR gamma must lie in (0, 1]"),
    (["--pear-weight-min", "5", "--pear-weight-max", "1"], "weight_min <= weight_max"),
    (["--retain-every", "0"], "--retain-every must be >= 1"),
])
def test_bad_pear_and_retain_options(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(flags)
    assert message in str(exit_info.value)


def test_shared_prefix_training_equals_unshared_step_by_step(runs):
    """Run A forwards pair trees (the default); the same run with --share-prefix off forwards both
    sequences whole: the same metrics at every step, to float noise, with fewer tokens forwarded."""
    root, _, _, _ = runs
    run(TRAIN + COMMON + ["--per-device-batch", "4", "--share-prefix", "off", "--cache-dir", str(root / "cache"),
                          "--output-dir", str(root / "unshared")])
    shared, unshared = logged_steps(root / "a"), logged_steps(root / "unshared")
    assert_same_steps(shared, unshared, ("loss", "delta", "rewards/chosen", "rewards/rejected", "grad_norm", "chosen/nll"))
    for mine, theirs in zip(shared, unshared):
        assert theirs["tokens/shared_fraction"] == 0 and mine["tokens/shared_fraction"] > 0.2
        assert mine["tokens/forwarded"] == pytest.approx(theirs["tokens/forwarded"] * (1 - mine["tokens/shared_fraction"]))
