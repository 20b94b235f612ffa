"""QLoRA (``--load-in-4bit``): LoRA adapters on a base whose linear layers are bitsandbytes' 4-bit NF4,
as real runs of the built-in model on the CPU, in one process and under ZeRO-3 on two (gloo). Every
step trains on the same 4 pairs, so the loss must fall; the reference is the 4-bit base's (not the
full-precision model's); only the adapters train, so PEFT's 4-bit base plus the saved adapter is the
trained model; ZeRO-3 trains the same adapters as one process."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spot_fast import config as train_config
from spot_fast.data import load_pairs
from spot_fast.models import (ASSETS, BUILTIN_MODEL, ModelError, load_model, load_tokenizer, model_identity,
                              tiny_qwen3_config)

from hf_logps import hf_token_logps
from same_training import assert_same_steps, assert_same_weights

pytest.importorskip("bitsandbytes", reason="--load-in-4bit needs bitsandbytes")

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATE = 5e-2
TRAIN = [str(REPO / "spot_fast" / "train.py"), "--load-in-4bit", "--lora-r", "4", "--lora-alpha", "8",
         "--lora-targets", "q_proj,v_proj,down_proj", "--max-steps", "5", "--epochs", "5", "--grad-accum", "1",
         "--warmup-ratio", "0", "--learning-rate", str(LEARNING_RATE), "--eval-data", str(ASSETS / "eval_pairs.jsonl")]
LAUNCHES = {  # 4 pairs per step: one process, or 2 on each of 2 ZeRO-3 processes
    "one": [sys.executable] + TRAIN + ["--per-device-batch", "4"],
    "zero3": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + TRAIN
             + ["--per-device-batch", "2", "--zero-stage", "3"],
}


def eval_nll(model):
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "eval_pairs.jsonl", tokenizer, 8192)[0]
    with torch.no_grad():
        total = sum(hf_token_logps(model, p.prompt_ids, p.chosen_ids).sum() for p in pairs)
    return float(-total / sum(len(p.chosen_ids) for p in pairs))


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory):
    """name -> (run directory, stdout and stderr, metric rows); the training data is 4 pairs."""
    root = tmp_path_factory.mktemp("qlora")
    data = root / "pairs.jsonl"
    data.write_text("".join((ASSETS / "pairs.jsonl").read_text().splitlines(keepends=True)[:4]))
    runs = {}
    for name, launch in LAUNCHES.items():
        command = launch + ["--data", str(data), "--cache-dir", str(root / f"cache-{name}"), "--output-dir", str(root / name)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        runs[name] = root / name, result.stdout + result.stderr, [json.loads(line) for line in open(root / name / "metrics.jsonl")]
    return runs


def test_qlora_trains_only_the_adapters_and_the_loss_falls(qlora_runs):
    _, output, rows = qlora_runs["one"]
    adapters = 2 * 4 * ((64 + 64) + (64 + 32) + (192 + 64))
    full = sum(p.numel() for p in load_model(BUILTIN_MODEL).parameters())  # 4-bit weights counted unpacked
    assert f"LoRA: {adapters} trainable parameters of {full + adapters}" in output
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 5
    assert [r["rewards/chosen"] for r in rows if "loss" in r][0] == 0  # starts as its reference, on the same path
    assert losses[-1] < losses[0] - 0.05, losses


def test_reference_is_the_4bit_base(qlora_runs):
    """The cached reference equals the 4-bit base model's log-probs from its own logits, and is far
    from the full-precision model's (so the comparison tells the two apart)."""
    run_dir, _, _ = qlora_runs["one"]
    [cache] = [p for p in (run_dir.parent / "cache-one").glob("reference-*.pt")
               if torch.load(p, weights_only=True)["logps"].shape[0] == 4]
    cached = torch.load(cache, weights_only=True)["logps"].double()
    pairs = load_pairs(run_dir.parent / "pairs.jsonl", load_tokenizer(BUILTIN_MODEL), 8192)[0]

    def sums(model):
        return torch.tensor([[float(hf_token_logps(model, p.prompt_ids, ids).sum()) for ids in (p.chosen_ids, p.rejected_ids)]
                             for p in pairs], dtype=torch.float64)

    torch.testing.assert_close(cached, sums(load_model(BUILTIN_MODEL, load_in_4bit=True)), rtol=1e-5, atol=1e-4)
    assert (cached - sums(load_model(BUILTIN_MODEL))).abs().max() > 1e-2


@pytest.mark.parametrize("name", list(LAUNCHES))
def test_saved_adapter_on_the_4bit_base_is_the_trained_model(qlora_runs, name):
    from peft import PeftModel

    run_dir, _, rows = qlora_runs[name]
    logged = [r for r in rows if "eval/nll" in r][-1]["eval/nll"]
    adapted = PeftModel.from_pretrained(load_model(BUILTIN_MODEL, load_in_4bit=True), run_dir / "final").eval()
    assert eval_nll(adapted) == pytest.approx(logged, rel=1e-5)
    assert abs(eval_nll(load_model(BUILTIN_MODEL, load_in_4bit=True)) - logged) > 3e-4  # training changed it (> 4x the tolerance)


def test_a_4bit_model_is_another_model_for_the_log_prob_cache(qlora_runs):
    """The cache key names the model: a full-precision run given the 4-bit run's cache directory
    computes its own reference instead of reusing the 4-bit one."""
    assert model_identity(BUILTIN_MODEL, load_in_4bit=True) != model_identity(BUILTIN_MODEL)
    root = qlora_runs["one"][0].parent
    shared = root / "cache-shared"
    shutil.copytree(root / "cache-one", shared)
    four_bit = sorted(p.name for p in shared.glob("reference-*.pt"))
    command = [a for a in LAUNCHES["one"] if a != "--load-in-4bit"] + [
        "--max-steps", "1", "--data", str(root / "pairs.jsonl"), "--cache-dir", str(shared),
        "--output-dir", str(root / "full-precision")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reference log-probs of pairs.jsonl computed" in result.stdout
    # train, eval sums and eval per-token (the held-out KL), each for both models
    assert len(sorted(p.name for p in shared.glob("reference-*.pt"))) == 2 * len(four_bit) == 6


def test_zero3_trains_the_adapters_of_one_process(qlora_runs):
    """ZeRO-3 partitions the packed 4-bit weights with the rest; it must train what one process trains:
    the same metrics at every step, adapters that compute the same held-out NLL (to 1e-5), and
    adapter weights equal up to float noise at this learning rate (``assert_same_weights``: 1% of one
    step). Both runs compute the same function (the same reference log-probs, the first step's grad norm
    to 1e-8); they differ by the order of fp32 sums, which Adam at 5e-2 turns into differences of up to
    5e-4 on the few of the 3840 adapter elements whose gradients are small (measured on an Intel Xeon
    with AVX512-BF16: 1 to 15 elements above 1e-5, depending on which CPU kernels torch used)."""
    one, zero3 = ([r for r in qlora_runs[name][2] if "loss" in r] for name in ("one", "zero3"))
    assert_same_steps(zero3, one, ("loss", "rewards/chosen", "rewards/rejected", "grad_norm"))
    evaluated = [[r for r in qlora_runs[name][2] if "eval/nll" in r][-1]["eval/nll"] for name in ("zero3", "one")]
    assert evaluated[0] == pytest.approx(evaluated[1], rel=1e-5), "held-out NLL of the ZeRO-3 adapters"
    assert_same_weights(*(load_file(qlora_runs[name][0] / "final" / "adapter_model.safetensors") for name in ("zero3", "one")),
                        bound=2e-2 * LEARNING_RATE, noise=1e-2 * LEARNING_RATE)


@pytest.mark.parametrize("argv, message", [
    (["--load-in-4bit"], "--load-in-4bit needs --lora-r"),
    (["--load-in-4bit", "--lora-r", "4", "--lora-save-merged"], "--lora-save-merged with --load-in-4bit"),
])
def test_4bit_options_that_cannot_work_are_refused(argv, message):
    with pytest.raises(SystemExit, match=message):
        train_config.parse_config(argv)


def test_4bit_without_bitsandbytes_is_refused(monkeypatch):
    monkeypatch.setattr(train_config, "bitsandbytes_installed", lambda: False)
    with pytest.raises(SystemExit, match="--load-in-4bit needs bitsandbytes, which is not installed"):
        train_config.parse_config(["--load-in-4bit", "--lora-r", "4"])


def test_4bit_rows_that_bitsandbytes_dequantizes_wrong_on_the_cpu_are_refused(tmp_path):
    """A hidden size of 48 gives q_proj rows of 48 elements, not a multiple of the 64-element block."""
    from transformers import Qwen3ForCausalLM

    config = tiny_qwen3_config(640)
    config.hidden_size = 48
    Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="q_proj has rows of 48 elements, not a multiple of 64"):
        load_model(str(tmp_path), load_in_4bit=True)


def test_zero3_output_holds_no_known_noise(qlora_runs):
    """Without their filters this run prints torch's deprecation of the collectives DeepSpeed calls
    (18 lines a rank for 5 steps: the once-per-location memory is reset), bitsandbytes' failed fetch of
    an optional CPU kernel and PEFT's failed hub lookup (no network here); none of them is left."""
    output = qlora_runs["zero3"][1]
    assert "LoRA:" in output and "model saved to" in output
    for noise in ("FutureWarning", "all_gather_into_tensor", "reduce_scatter_tensor",
                  "Failed to load CPU gemm_4bit_forward", "Unable to fetch remote file"):
        assert noise not in output, noise
