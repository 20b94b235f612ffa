"""LoRA through PEFT, as real runs of the built-in model, in one process and under ZeRO-3 on two (gloo):
the reference log-probs are the base model's, only the adapters train, ZeRO-3 trains the same adapters
as one process, and the saved adapter, loaded with PEFT onto the untouched base model, is the trained
model (its held-out NLL is the one the run logged), as is the merged model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spot_fast.data import load_pairs
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer

from hf_logps import hf_token_logps
from same_training import assert_same_steps, assert_same_weights

REPO = Path(__file__).resolve().parents[1]
TRAIN = [str(REPO / "spot_fast" / "train.py"), "--max-steps", "4", "--grad-accum", "1", "--learning-rate", "2e-2",
         "--epochs", "1", "--eval-data", str(ASSETS / "eval_pairs.jsonl"), "--lora-save-merged",
         "--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj,down_proj"]
LAUNCHES = {  # the same 4 steps of 4 pairs: one process, or 2 pairs on each of 2 ZeRO-3 processes, which
    # recompute selectively (each mode with LoRA: tests/test_activation_checkpointing.py)
    "one": [sys.executable] + TRAIN + ["--per-device-batch", "4"],
    "zero3": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + TRAIN
             + ["--per-device-batch", "2", "--zero-stage", "3", "--gradient-checkpointing", "selective"],
}


def train(root, name):
    command = LAUNCHES[name] + ["--cache-dir", str(root / f"cache-{name}"), "--output-dir", str(root / name)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """name -> (run directory, result, metric rows) for both launches (each with its own cache)."""
    root = tmp_path_factory.mktemp("lora")
    runs = {}
    for name in LAUNCHES:
        result = train(root, name)
        runs[name] = root / name, result, [json.loads(line) for line in open(root / name / "metrics.jsonl")]
    return runs


@pytest.fixture(params=list(LAUNCHES))
def lora_run(request, lora_runs):
    return lora_runs[request.param]


def test_only_adapters_train(lora_run):
    _, result, rows = lora_run
    # 2 layers x 3 targets x (A: r x in + B: out x r); q_proj 64 -> 64, v_proj 64 -> 32, down_proj 192 -> 64
    adapters = 2 * 4 * ((64 + 64) + (64 + 32) + (192 + 64))
    assert f"LoRA: {adapters} trainable parameters" in result.stdout
    training = [r for r in rows if "loss" in r]
    assert training[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)  # B = 0: the policy starts as the base model
    assert training[-1]["rewards/margin"] != pytest.approx(0, abs=1e-4)  # and the adapters moved it


def test_reference_cache_holds_the_base_models_log_probs(lora_run):
    run_dir, _, _ = lora_run
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "pairs.jsonl", tokenizer, 8192)[0][:4]
    [train_cache] = [p for p in (run_dir.parent / f"cache-{run_dir.name}").glob("reference-*.pt")
                     if p.name.rsplit("-", 1)[0] == "reference" and torch.load(p, weights_only=True)["logps"].shape[0] > 100]
    cached = torch.load(train_cache, weights_only=True)["logps"]
    base = load_model(BUILTIN_MODEL)
    expected = torch.tensor([[float(hf_token_logps(base, p.prompt_ids, ids).sum()) for ids in (p.chosen_ids, p.rejected_ids)]
                             for p in pairs])
    torch.testing.assert_close(cached[:4].double(), expected.double(), rtol=1e-5, atol=1e-4)


def test_saved_adapter_on_the_base_model_is_the_trained_model(lora_run):
    """The run's final evaluation scored the trained model; PEFT's base + adapter must give the same
    NLL, which it would not if any base weight had moved or the adapter were saved wrong."""
    from peft import PeftModel

    run_dir, _, rows = lora_run
    final = run_dir / "final"
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    assert not (final / "model.safetensors").exists()  # the adapter alone
    logged = [r for r in rows if "eval/nll" in r][-1]["eval/nll"]
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    eval_pairs = load_pairs(ASSETS / "eval_pairs.jsonl", tokenizer, 8192)[0]
    tokens = sum(len(p.chosen_ids) for p in eval_pairs)

    def nll(model):
        with torch.no_grad():
            return float(-sum(hf_token_logps(model, p.prompt_ids, p.chosen_ids).sum() for p in eval_pairs) / tokens)

    adapted = PeftModel.from_pretrained(load_model(BUILTIN_MODEL), final).eval()
    assert nll(adapted) == pytest.approx(logged, rel=1e-5)
    assert abs(nll(load_model(BUILTIN_MODEL)) - logged) > 1e-3  # training changed it


def test_merged_model_loads_without_peft_and_is_the_trained_model(lora_run):
    """--lora-save-merged: W + (alpha / r) B A written as a plain model; it scores the held-out pairs
    as the trained model did."""
    from transformers import AutoModelForCausalLM

    run_dir, _, rows = lora_run
    merged = run_dir / "final-merged"
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    logged = [r for r in rows if "eval/nll" in r][-1]["eval/nll"]
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    eval_pairs = load_pairs(ASSETS / "eval_pairs.jsonl", tokenizer, 8192)[0]
    tokens = sum(len(p.chosen_ids) for p in eval_pairs)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        nll = float(-sum(hf_token_logps(model, p.prompt_ids, p.chosen_ids).sum() for p in eval_pairs) / tokens)
    assert nll == pytest.approx(logged, rel=1e-5)
    assert not list(run_dir.glob(".tmp-*"))


def test_merged_model_is_the_base_model_plus_the_saved_adapter(lora_run):
    """Every weight of the merged model equals the base model's, except the adapted ones, which equal
    W + (alpha / r) B A with the saved B and A: no base weight moved, and under ZeRO-3 every adapted
    layer was gathered whole when merged."""
    run_dir, _, _ = lora_run
    base = load_model(BUILTIN_MODEL).state_dict()
    merged = load_file(run_dir / "final-merged" / "model.safetensors")
    adapter = load_file(run_dir / "final" / "adapter_model.safetensors")
    assert sorted(merged) == sorted(base)
    adapted = 0
    for name, weight in base.items():
        layer = "base_model.model." + name.removesuffix(".weight")
        if f"{layer}.lora_A.weight" in adapter:
            delta = (8 / 4) * adapter[f"{layer}.lora_B.weight"] @ adapter[f"{layer}.lora_A.weight"]
            assert delta.abs().max() > 1e-4, name  # the adapter moved this layer
            torch.testing.assert_close(merged[name], weight + delta, rtol=0, atol=1e-6)
            adapted += 1
        else:
            assert torch.equal(merged[name], weight), name
    assert adapted == 2 * 3


def test_zero3_trains_the_adapters_of_one_process(lora_runs):
    """Under ZeRO-3 the partitioned base model gets the same adapters (drawn from the seed on every
    rank) and trains them as one process does: loss, rewards and grad norm at every step to 1e-5, the final
    adapters to float noise (Adam turns reassociation noise on near-zero gradients into steps of up
    to lr; a difference in what trains would move most elements)."""
    one, zero3 = ([r for r in lora_runs[name][2] if "loss" in r] for name in ("one", "zero3"))
    assert [r["step"] for r in one] == [1, 2, 3, 4]
    assert_same_steps(zero3, one, ("loss", "rewards/chosen", "rewards/rejected", "grad_norm"))
    assert_same_weights(*(load_file(lora_runs[name][0] / "final" / "adapter_model.safetensors") for name in ("zero3", "one")),
                        bound=1e-3)
