"""LoRA through PEFT, as a real run (one process, the built-in model): the reference log-probs are the
base model's, only the adapters train, and the saved adapter, loaded with PEFT onto the untouched
base model, is the trained model (its held-out NLL is the one the run logged)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spot_fast.data import load_pairs
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer

from hf_logps import hf_token_logps

REPO = Path(__file__).resolve().parents[1]
LORA = ["--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj,down_proj"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    command = [sys.executable, str(REPO / "spot_fast" / "train.py"), "--max-steps", "4", "--grad-accum", "1",
               "--per-device-batch", "4", "--learning-rate", "2e-2", "--epochs", "1", "--eval-data",
               str(ASSETS / "eval_pairs.jsonl"), "--cache-dir", str(root / "cache"), "--output-dir", str(root / "run"), "--lora-save-merged", *LORA]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    rows = [json.loads(line) for line in open(root / "run" / "metrics.jsonl")]
    return root, result, rows


def test_only_adapters_train(lora_run):
    _, result, rows = lora_run
    # 2 layers x 3 targets x (A: r x in + B: out x r); q_proj 64 -> 64, v_proj 64 -> 32, down_proj 192 -> 64
    adapters = 2 * 4 * ((64 + 64) + (64 + 32) + (192 + 64))
    assert f"LoRA: {adapters} trainable parameters" in result.stdout
    training = [r for r in rows if "loss" in r]
    assert training[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)  # B = 0: the policy starts as the base model
    assert training[-1]["rewards/margin"] != pytest.approx(0, abs=1e-4)  # and the adapters moved it


def test_reference_cache_holds_the_base_models_log_probs(lora_run):
    root, _, _ = lora_run
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    pairs = load_pairs(ASSETS / "pairs.jsonl", tokenizer, 8192)[0][:4]
    [train_cache] = [p for p in (root / "cache").glob("reference-*.pt")
                     if torch.load(p, weights_only=True)["logps"].shape[0] > 100]
    cached = torch.load(train_cache, weights_only=True)["logps"]
    base = load_model(BUILTIN_MODEL)
    expected = torch.tensor([[float(hf_token_logps(base, p.prompt_ids, ids).sum()) for ids in (p.chosen_ids, p.rejected_ids)]
                             for p in pairs])
    torch.testing.assert_close(cached[:4].double(), expected.double(), rtol=1e-5, atol=1e-4)


def test_saved_adapter_on_the_base_model_is_the_trained_model(lora_run):
    """The run's final evaluation scored the trained model; PEFT's base + adapter must give the same
    NLL, which it would not if any base weight had moved or the adapter were saved wrong."""
    from peft import PeftModel

    root, _, rows = lora_run
    final = root / "run" / "final"
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

    root, _, rows = lora_run
    merged = root / "run" / "final-merged"
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    logged = [r for r in rows if "eval/nll" in r][-1]["eval/nll"]
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    eval_pairs = load_pairs(ASSETS / "eval_pairs.jsonl", tokenizer, 8192)[0]
    tokens = sum(len(p.chosen_ids) for p in eval_pairs)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        nll = float(-sum(hf_token_logps(model, p.prompt_ids, p.chosen_ids).sum() for p in eval_pairs) / tokens)
    assert nll == pytest.approx(logged, rel=1e-5)
    assert not list((root / "run").glob(".tmp-*"))
