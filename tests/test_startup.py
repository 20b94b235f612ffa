"""What a run needs from its machine is checked with its options, before any work and before the
heavy imports: each missing package, a W&B run without a key, an unreachable hub, in one line each
(packages made missing as Python sees absent ones: tests/helpers/missing_packages.py); what ``auto`` chose;
metrics.jsonl created with its first row; the refusal of a used output directory; where DeepSpeed's
CPU op is built. Costs ~15 s on 2 cores (two subprocesses that import torch)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spot_fast import engine, run_dir
from spot_fast.config import ConfigError, TrainConfig
from spot_fast.metrics import MetricsLog
from spot_fast.preflight import check_triton_backend

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def missing_package_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("missing") / "results.json"
    result = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "missing_packages.py"), str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case, message", [
    ("deepspeed", "spot_fast/train.py needs DeepSpeed, which is not installed: pip install --no-build-isolation deepspeed==0.19.8"),
    ("wandb", "--report-to wandb needs the wandb package: pip install wandb"),
    ("wandb key", "--report-to wandb: no W&B API key (WANDB_API_KEY, or `wandb login`"),
    ("tensorboard", "--report-to tensorboard needs the tensorboard package: pip install tensorboard"),
    ("bitsandbytes", "--load-in-4bit needs bitsandbytes, which is not installed (pip install bitsandbytes)"),
    ("flex attention", "--attention flex needs torch's FlexAttention (torch >= 2.5)"),
    ("hub", "--model spotfast/absent: the hub (http://127.0.0.1:9) cannot be reached"),
    ("hub, cached", "it is in the local cache"),
])
def test_a_missing_requirement_stops_the_run_in_one_line_before_any_work(missing_package_runs, case, message):
    run = missing_package_runs[case]
    assert run["exit"].startswith("error: ") and message in run["exit"] and "\n" not in run["exit"], run
    assert not run["output_dir_exists"] and run["heavy"] == [], run  # nothing written, transformers not imported
    if case.startswith("hub"):
        assert "HF_HUB_OFFLINE=1" in run["exit"]


def test_the_triton_backend_without_cuda_is_refused_with_the_options(missing_package_runs):
    """Refused like --attention flex, before the data, DeepSpeed or the output directory; under the
    tests' TRITON_INTERPRET=1 the option is allowed (the interpreter runs the kernels on the CPU)."""
    run = missing_package_runs["triton without CUDA"]
    assert run["exit"].startswith("error: --kernel-backend triton needs CUDA") and "\n" not in run["exit"], run
    assert "--kernel-backend chunked" in run["exit"]
    assert not run["output_dir_exists"] and run["heavy"] == [], run
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    check_triton_backend()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA --liger on is allowed")
def test_liger_on_without_cuda_is_refused(missing_package_runs):
    assert missing_package_runs["liger on"]["exit"] == "error: --liger on needs CUDA: Liger's kernels are Triton GPU kernels"


def test_liger_auto_is_on_only_where_it_imports_and_supports_the_model(missing_package_runs):
    applied, why = missing_package_runs["liger auto, CUDA"]  # on a CUDA machine, liger-kernel missing
    assert not applied and "liger-kernel does not import" in why and "pip install liger-kernel" in why
    assert missing_package_runs["liger on, CUDA"].startswith("--liger on: liger-kernel does not import")
    support = missing_package_runs["liger support"]
    assert support["qwen3"] == [True, "liger-kernel has kernels for model type 'qwen3'"]
    assert support["no_such_architecture"][0] is False


def test_wandb_without_a_key_exits_1_with_one_line_and_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"NETRC": str(tmp_path / "none")}
    output_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, str(REPO / "spot_fast" / "train.py"), "--report-to", "wandb",
                             "--output-dir", str(output_dir)], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "WANDB_MODE=offline" in result.stderr, result.stderr
    assert not output_dir.exists()


def test_metrics_jsonl_is_created_with_its_first_row(tmp_path):
    log = MetricsLog(tmp_path, enabled=True, report_to="none")
    assert not (tmp_path / "metrics.jsonl").exists()
    log.log(1, {"loss": 0.5})
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 0.5}
    MetricsLog(tmp_path / "empty", enabled=True, report_to="none").close()
    assert not (tmp_path / "empty" / "metrics.jsonl").exists()


def test_a_used_output_dir_suggests_resume_only_where_a_checkpoint_is(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError) as refused:
        run_dir.prepare(TrainConfig(output_dir=str(tmp_path)), world=1)
    assert "--resume" not in str(refused.value) and "--overwrite" in str(refused.value)
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="continue that run with --resume latest"):
        run_dir.prepare(TrainConfig(output_dir=str(tmp_path)), world=1)


def test_deepspeed_builds_its_cpu_op_in_this_environment_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "restored after the test")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    if sys.prefix == sys.base_prefix or not os.access(sys.prefix, os.W_OK):
        pytest.skip("not a writable virtual environment")
    assert engine.extensions_dir() == os.path.join(sys.prefix, "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert engine.extensions_dir() == str(tmp_path)  # a directory the user chose is kept
    engine.announce_communication_op_build(str(tmp_path))
    assert "building its CPU communication op once" in capsys.readouterr().out
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    engine.announce_communication_op_build(str(tmp_path))
    assert capsys.readouterr().out == ""
