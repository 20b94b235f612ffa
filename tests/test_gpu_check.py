"""benchmarks/gpu_check.py: honest without CUDA, every part's code path alive (--dry-run), and the
rules each part runs under (a missing package is a named skip, a time limit kills the part)."""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cuda_build, says", [(None, "is a CPU-only build: on a GPU node, install a CUDA build"),
                                               ("12.8", "is built for CUDA 12.8 but sees no GPU")])
def test_without_cuda_it_says_so_names_the_torch_build_and_does_nothing(gpu_check, tmp_path, monkeypatch, capsys,
                                                                         cuda_build, says):
    """A CPU build of torch on a GPU node is the usual reason for no CUDA: the message names the torch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(torch.version, "hip", None)
    assert gpu_check.main(["--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device here" in out and "nothing to check" in out and f"torch {torch.__version__} {says}" in out, out
    assert list(tmp_path.iterdir()) == []


def test_a_missing_package_is_a_skip_that_names_it(gpu_check, tmp_path):
    part = gpu_check.Part("needs-more", ("yaml", "no_such_package_here"), 60, None, None)
    entry = gpu_check.run_part(part, tmp_path / "work", {}, dry_run=False, limit_s=60)
    assert entry["status"] == "skipped" and "needs no_such_package_here: not importable" in entry["reason"]


def test_a_part_is_killed_at_its_time_limit(gpu_check, tmp_path):
    part = gpu_check.Part("sleeps", (), 60, lambda work, dry_run: [sys.executable, "-c", "import time; time.sleep(120)"],
                          gpu_check.read_json)
    entry = gpu_check.run_part(part, tmp_path / "work", None, dry_run=False, limit_s=gpu_check.MIN_PART_S)
    assert entry["status"] == "timed out" and entry["seconds"] < 60


def writes_result(text):
    """A part's command that writes ``text`` (None: nothing) as its result.json and exits 0."""
    script = "pass" if text is None else f"import pathlib, sys; pathlib.Path(sys.argv[1], 'result.json').write_text({text!r})"
    return lambda work, dry_run: [sys.executable, "-c", script, str(work)]


@pytest.mark.parametrize("text, read, why", [
    (None, "read_json", "No such file"), ("", "read_json", "JSONDecodeError"),
    ("{}", "read_json", "result.json holds no results"),
    (None, "read_pytest", "pytest's output ends without test counts"),
], ids=["no file", "empty file", "empty json", "no pytest output"])
def test_a_part_that_exits_0_without_results_fails(gpu_check, tmp_path, text, read, why):
    part = gpu_check.Part("silent", (), 60, writes_result(text), getattr(gpu_check, read))
    entry = gpu_check.run_part(part, tmp_path / "work", None, dry_run=False, limit_s=60)
    assert entry["status"] == "failed", f"a part that exited 0 without results is reported {entry['status']!r}"
    assert entry["exit_code"] == 0 and entry["reason"].startswith("exited 0 without results") and why in entry["reason"]


def test_a_dry_run_says_what_each_part_did(gpu_check, tmp_path):
    """"ok" alone would read as measured on a GPU: a dry-run entry carries what its part did, in the table."""
    part = gpu_check.Part("toy", (), 60, writes_result('{"shapes": []}'), gpu_check.read_json, dry_run="eager alone")
    entry = gpu_check.run_part(part, tmp_path / "work", None, dry_run=True, limit_s=60)
    assert entry["status"] == "ok" and entry["dry_run_did"] == "eager alone"
    assert f"| toy | ok | {entry['seconds']} | dry run: eager alone |" in gpu_check.table(report_of([entry], dry_run=True))
    assert all(p.dry_run for p in gpu_check.PARTS if not p.cuda_only), "every part that runs dry says what it does"


def report_of(parts, dry_run=False):
    return {"device": "test", "utc": "now", "dry_run": dry_run, "versions": {}, "parts": parts}


def test_the_table_compares_the_trl_dpo_trainers(gpu_check):
    """The headline of a GPU run: TRL's step with its own LM head and with SpotDPOTrainer, side by side
    (here the committed CPU measurement)."""
    [measured] = (REPO / "benchmarks" / "results").glob("trl-dpo-*.json")
    result = json.loads(measured.read_text())
    trl, spot = result["results"]
    table = gpu_check.table(report_of([{"name": "trl-dpo", "status": "ok", "seconds": 1, "result": result}]))
    ratios = (f"SpotDPOTrainer: {spot['step_ms'] / trl['step_ms']:.2f} x TRL's step time, "
              f"{spot['workspace_mib'] / trl['workspace_mib']:.2f} x its workspace")
    assert f"| trl-dpo | ok | 1 | {ratios} |" in table, table
    section = table.split("## trl-dpo\n", 1)[1]
    assert f"- TRL's own LM head: {trl['step_ms']:.0f} ms/step, workspace {trl['workspace_mib']:.0f} MiB" in section
    assert f"- SpotDPOTrainer (spot_kernels): {spot['step_ms']:.0f} ms/step, workspace {spot['workspace_mib']:.0f} MiB" in section


def write_wheel(folder):
    """A pure-Python wheel of one module, ``probe_module``."""
    folder.mkdir()
    info = "probe_module-1.0.dist-info"
    files = {"probe_module.py": "VALUE = 42\n", f"{info}/METADATA": "Metadata-Version: 2.1\nName: probe-module\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / "probe_module-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def test_wheels_are_installed_for_the_run_and_importable_in_every_part(gpu_check, tmp_path):
    """``--wheels DIR``: its wheels go into a folder of the run, which is on the parts' PYTHONPATH after
    this checkout (its ``spot_kernels``)."""
    write_wheel(tmp_path / "wheels")
    (tmp_path / "work").mkdir()
    paths = gpu_check.import_paths(tmp_path / "work", tmp_path / "wheels")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    assert gpu_check.missing_modules(["probe_module", "spot_kernels"], env) == []
    assert gpu_check.missing_modules(["probe_module"], None) == ["probe_module"], "not in the checking process"
    assert gpu_check.package_versions(env)["pytest"] == pytest.__version__
    probe = "import probe_module, spot_kernels; print(probe_module.VALUE, spot_kernels.__file__)"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path,
                          check=True)
    value, kernels = done.stdout.split()
    assert value == "42" and Path(kernels).resolve() == REPO / "spot_kernels" / "__init__.py"


def test_dry_run_runs_every_part_at_toy_sizes(tmp_path):
    """One dry run (~30 s of CPU): every part's command runs and its results are read into the JSON
    and the table, except FlexAttention's training step (CUDA only), skipped with its reason."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [written] = tmp_path.glob("gpu-check-dry-run-*.json")
    report = json.loads(written.read_text())
    parts = {part["name"]: part for part in report["parts"]}
    assert {name: part["status"] for name, part in parts.items()} == {
        "cuda-tests": "ok", "lm-head": "ok", "train-bench-sdpa": "ok", "train-bench-varlen": "ok",
        "train-bench-flex": "skipped", "trl-dpo": "ok", "train-steps": "ok"}
    tests = parts["cuda-tests"]["result"]
    assert {"tests/test_attention_cuda.py", "tests/test_varlen_attention.py"} <= set(tests["files"])
    assert tests["counts"]["tests collected"] > 10
    assert [row["method"] for row in parts["lm-head"]["result"]["shapes"][0]["results"]] == ["eager"]
    for attention in ("sdpa", "varlen"):
        rows = parts[f"train-bench-{attention}"]["result"]["results"]
        assert [(row["attention"], row["layout"]) for row in rows] == [(attention, "padded"), (attention, "packed"),
                                                                      (attention, "shared")]
    dpo = parts["trl-dpo"]["result"]
    assert [row["trainer"] for row in dpo["results"]] == ["trl", "spot_kernels"]
    assert dpo["results"][0]["loss"] == pytest.approx(dpo["results"][1]["loss"], rel=1e-5)
    steps = parts["train-steps"]["result"]
    assert steps["host_syncs"] == {"traced": False, "steps": 1, "sites": []} and steps["last_row"]["step"] == 1
    table = written.with_suffix(".md").read_text()
    assert all(f"| {name} | {part['status']} |" in table for name, part in parts.items())
    assert all(f"dry run: {part['dry_run_did']}" in table for part in parts.values() if part["status"] == "ok")
    assert "## trl-dpo" in table
