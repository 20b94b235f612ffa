"""A run's effective configuration (OUTPUT_DIR/config.yaml, loadable with --config), the shipped examples/,
and held-out evaluation every --eval-every steps. One short run of examples/tiny-cpu.yaml serves the
checks that need a run."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spot_fast import config as config_module
from spot_fast.config import DEMO_LEARNING_RATE, TrainConfig, parse_config, write_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EVAL_KEYS = ("eval/loss", "eval/nll", "eval/kl", "eval/kl_k3", "eval/rewards/chosen", "eval/rewards/rejected",
             "eval/rewards/margin", "eval/rewards/accuracy")


@pytest.fixture
def no_machine_checks(monkeypatch):
    """Examples name models on the hub and packages a GPU node has: parsed and validated here, not run, so
    what they need from the machine (preflight) is not asked of this one."""
    monkeypatch.setattr(config_module, "check_environment", lambda config: None)


def test_examples_are_there():
    assert {path.stem for path in EXAMPLES} >= {"spot-qwen3-8b-8gpu", "lora-1gpu", "qlora-1gpu", "zero3-offload-70b",
                                                 "pear-sft", "rectify-then-train", "tiny-cpu"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_example_parses_and_validates_with_the_values_it_writes(path, no_machine_checks, monkeypatch):
    monkeypatch.chdir(REPO)
    written = yaml.safe_load(path.read_text())
    config = parse_config(["--config", str(path)])  # unknown options, bad values and bad combinations exit here
    for name, value in written.items():
        assert getattr(config, name) == (float(value) if isinstance(getattr(config, name), float) else value), name


def test_the_paper_recipe_example_is_the_release_recipe(no_machine_checks):
    config = parse_config(["--config", str(REPO / "examples" / "spot-qwen3-8b-8gpu.yaml")])
    assert config.model == "Qwen/Qwen3-8B" and config.loss == "spot_bco" and config.render == "trl020"
    assert config.per_device_batch * config.grad_accum * 8 == 32 and config.token_layout().max_prompt_length == 4096
    assert (config.learning_rate, config.beta, config.epochs, config.max_length) == (1e-6, 0.1, 2, 8192)


def test_config_yaml_round_trips(tmp_path, no_machine_checks):
    """Every option, resolved, written and read back: the same TrainConfig (flags over a YAML included)."""
    config = parse_config(["--config", str(REPO / "examples" / "lora-1gpu.yaml"), "--beta", "0.25", "--eval-data",
                           "held.parquet", "--eval-every", "3", "--data-config", "default", "--output-dir", str(tmp_path)])
    path = write_config(config, tmp_path)
    assert set(yaml.safe_load(path.read_text())) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert parse_config(["--config", str(path)]) == config
    demo = parse_config(["--output-dir", str(tmp_path)])  # the built-in model's learning rate, resolved
    assert parse_config(["--config", str(write_config(demo, tmp_path))]) == demo and demo.learning_rate == DEMO_LEARNING_RATE
    assert not list(tmp_path.glob(".config.yaml.tmp*"))  # written through a temporary file, renamed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """examples/tiny-cpu.yaml for 4 steps, evaluated every 2, a checkpoint at step 2."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    command = [sys.executable, str(REPO / "spot_fast" / "train.py"), "--config", "examples/tiny-cpu.yaml",
               "--max-steps", "4", "--eval-every", "2", "--save-every", "2", "--log-every", "1",
               "--output-dir", str(out), "--cache-dir", str(out.parent / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out, result


def test_the_run_writes_its_effective_config_which_reproduces_it(tiny_run, monkeypatch):
    out, _ = tiny_run
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository
    loaded = parse_config(["--config", str(out / "config.yaml")])
    recorded = json.loads((out / "final" / "trainer_state.json").read_text())["config"]
    assert loaded == TrainConfig(**recorded)  # what the run used, every option
    assert (loaded.max_steps, loaded.eval_every, loaded.eval_data) == (4, 2, "spot_fast/assets/eval_pairs.jsonl")


def test_held_out_evaluation_is_logged_every_n_steps_and_recorded_in_checkpoints(tiny_run):
    out, result = tiny_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "eval/loss" in row]
    assert [row["step"] for row in evaluated] == [0, 2, 4]
    for row in evaluated:
        assert set(EVAL_KEYS) <= set(row), sorted(row)
    start = evaluated[0]
    assert start["eval/kl_k3"] == pytest.approx(0, abs=1e-6) and start["eval/rewards/margin"] == pytest.approx(0, abs=1e-6)
    assert evaluated[-1]["eval/kl_k3"] > 1e-4 and evaluated[-1]["eval/rewards/margin"] != start["eval/rewards/margin"]
    training = [row["step"] for row in rows if "loss" in row]
    assert training == [1, 2, 3, 4]  # evaluation rides on the training rows: one row per step (and step 0)
    for checkpoint, step in (("checkpoint-2", 2), ("final", 4)):
        state = json.loads((out / checkpoint / "trainer_state.json").read_text())
        row = next(r for r in evaluated if r["step"] == step)
        assert state["evaluation"] == {"step": step, **{key: row[key] for key in row if key.startswith("eval/")}}
    assert "evaluation: eval/nll" in result.stdout and (out / "training.png").stat().st_size > 0
