"""The trainer: losses on a fixed batch, end-to-end runs (1 and 2 processes), resume, cache, bad input.

The end-to-end runs are real subprocesses (DeepSpeed, gloo) on the built-in tiny model; three of them
are shared by several tests through module fixtures to keep the suite fast on two cores.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from spot_fast import train as train_module
from spot_fast.config import TrainConfig
from spot_fast.data import collate, load_pairs
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.policy import install_logprob_head
from spot_kernels import LOSS_KINDS, RewardShift

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "spot_fast" / "train.py")]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(REPO / "spot_fast" / "train.py")]
COMMON = ["--max-steps", "4", "--grad-accum", "1", "--log-every", "1", "--learning-rate", "1e-3", "--epochs", "1"]


def hf_sequence_logps(model, prompt, completion):
    """Summed completion log-probs from the model's own materialized logits (independent path)."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0].double().log_softmax(-1)
    return sum(logits[j, ids[0, j + 1]] for j in range(len(prompt) - 1, ids.shape[1] - 1))


@pytest.mark.parametrize("loss", LOSS_KINDS)
def test_step_loss_equals_direct_computation(loss):
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "pairs.jsonl", tokenizer, 8192)[0][:3]
    reference_model = load_model(BUILTIN_MODEL)
    policy = install_logprob_head(load_model(BUILTIN_MODEL))
    with torch.no_grad():  # move the policy away from the reference so rewards are not all zero
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    policy_copy = load_model(BUILTIN_MODEL)
    policy_copy.load_state_dict(policy.state_dict())
    ref = torch.tensor([[float(hf_sequence_logps(reference_model, p.prompt_ids, c)) for c in (p.chosen_ids, p.rejected_ids)]
                        for p in pairs])
    config = TrainConfig(loss=loss, beta=0.1)
    batch = collate(pairs, pack=True, pad_id=tokenizer.pad_token_id)
    got, metrics, _ = train_module.step_loss(policy, batch, ref, config, RewardShift())

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
    assert float(got) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    if loss == "spot_bco":
        assert float(metrics[5]) == pytest.approx(float(delta), abs=1e-5)


def run(command, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def metrics(output_dir):
    return [json.loads(line) for line in open(Path(output_dir) / "metrics.jsonl") if "loss" in line]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: 1 process, 4 pairs per step, checkpoint at step 2. B: resumes A from step 2.
    C: 2 processes x 2 pairs per step (the same global batch as A)."""
    root = tmp_path_factory.mktemp("runs")
    cache = ["--cache-dir", str(root / "cache")]
    a = run(TRAIN + COMMON + cache + ["--per-device-batch", "4", "--save-every", "2", "--output-dir", str(root / "a")])
    b = run(TRAIN + COMMON + cache + ["--per-device-batch", "4", "--resume", str(root / "a" / "checkpoint-2"),
                                      "--output-dir", str(root / "b")])
    c = run(TORCHRUN + COMMON + cache + ["--per-device-batch", "2", "--output-dir", str(root / "c")])
    return root, a, b, c


def test_run_saves_a_loadable_model_metrics_and_plot(runs):
    root, a, _, _ = runs
    final = root / "a" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    initial = load_model(BUILTIN_MODEL)
    assert not torch.equal(model.lm_head.weight, initial.lm_head.weight)  # it trained
    assert (root / "a" / "training.png").stat().st_size > 0
    rows = metrics(root / "a")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "delta",
                "grad_norm", "lr", "tokens_per_s", "padding_fraction"):
        assert key in rows[0]
    assert rows[0]["padding_fraction"] == 0.0  # packed
    assert not list(root.glob("a/.tmp-*"))  # no partial checkpoint left
    assert "reference log-probs computed" in a.stdout


def test_resume_continues_exactly(runs):
    root, _, b, _ = runs
    uninterrupted = {r["step"]: r for r in metrics(root / "a")}
    resumed = metrics(root / "b")
    assert [r["step"] for r in resumed] == [3, 4]
    for row in resumed:
        for key in ("loss", "rewards/chosen", "rewards/rejected", "delta", "lr"):
            assert row[key] == pytest.approx(uninterrupted[row["step"]][key], rel=1e-6, abs=1e-9), key
    assert "reference log-probs reused" in b.stdout
    weights_a = load_file(root / "a" / "final" / "model.safetensors")
    weights_b = load_file(root / "b" / "final" / "model.safetensors")
    assert all(torch.allclose(weights_a[k], weights_b[k], atol=1e-6) for k in weights_a)


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    """Gradients are averaged over ranks and delta over all ranks' rewards, so 2 x 2 pairs equals
    1 x 4 pairs up to float reassociation. Tolerances: loss, delta, margin, grad norm 1e-5 (rel or abs) at
    every step; weights after 4 steps within 1e-5 for at least 99.9% of elements. The rest are
    elements whose gradient is at float-noise level, where Adam's m / sqrt(v) turns reassociation
    noise into a step of up to +-lr; they must still differ by less than lr * steps."""
    root, _, _, c = runs
    assert "reference log-probs reused" in c.stdout
    one = {r["step"]: r for r in metrics(root / "a")}
    for row in metrics(root / "c"):
        for key in ("loss", "delta", "grad_norm", "rewards/margin"):
            assert row[key] == pytest.approx(one[row["step"]][key], rel=1e-5, abs=1e-5), key
    weights_a = load_file(root / "a" / "final" / "model.safetensors")
    weights_c = load_file(root / "c" / "final" / "model.safetensors")
    differences = torch.cat([(weights_a[k] - weights_c[k]).abs().flatten() for k in weights_a])
    assert (differences > 1e-5).float().mean() < 1e-3
    assert differences.max() < 1e-3 * 4


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


GOOD = json.dumps({"question": "1+1?", "chosen": "2", "rejected": "3"})


@pytest.mark.parametrize("lines, message", [
    ([GOOD, '{"question": "2+2?", "chosen": "4", '], r"bad\.jsonl:2: invalid JSON"),
    ([GOOD, json.dumps({"question": "x", "chosen": "y"})], r"bad\.jsonl:2: missing field: expected one of 'original_answer', 'rejected'"),
    ([json.dumps({"question": "x", "chosen": " ", "rejected": "y"})], r"bad\.jsonl:1: field 'chosen' is empty"),
    ([], r"bad\.jsonl: no usable pairs"),
    ([json.dumps({"question": "x " * 500, "chosen": "y", "rejected": "z"})], r"no usable pairs \(1 prompts longer than max_length 64\)"),
])
def test_bad_data_is_reported_with_file_and_line(tmp_path, capsys, lines, message):
    data = write_lines(tmp_path / "bad.jsonl", lines)
    code = train_module.main(["--data", data, "--output-dir", str(tmp_path / "out"), "--max-length", "64"])
    assert code == 1
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_model_and_unknown_loss(tmp_path, capsys):
    assert train_module.main(["--model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path / "out")]) == 1
    assert "no-such-model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(["--loss", "ipo"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ipo'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
