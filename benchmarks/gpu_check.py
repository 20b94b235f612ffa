"""One command on a GPU node: check and measure everything that needs a GPU, in under 8 minutes.

    make gpu-check                                        # with the environment `make` installs
    python3 benchmarks/gpu_check.py --wheels gpu-wheels   # torch + triton preinstalled, the rest as wheels
    python benchmarks/gpu_check.py --dry-run --out-dir D  # toy sizes on the CPU (the test suite runs it)

Parts, each a subprocess of this checkout's code with its own time limit (together under
``BUDGET_S``); a part that cannot run is skipped with its reason (a missing package is named):

- ``cuda-tests``: every test file that asks for CUDA (kernels against float64, FlexAttention against
  SDPA, torch's varlen_attn against its reference and the start-up self-check, ...), through pytest.
- ``lm-head``: ``bench_kernels.py`` at Qwen3-8B's head (H 4096, V 151936, bf16, N 4096 and 16384):
  eager, chunked, triton, Liger's fused linear cross entropy and DPO loss where Liger is installed;
  time, workspace, time over the 8NHV floor at the measured matmul rate.
- ``train-bench-sdpa``, ``train-bench-varlen``, ``train-bench-flex``: ``bench_train.py`` (Qwen3-1.7B
  shape, bf16, answers sharing half their tokens) per attention backend: padded, packed and tree
  layouts; step time, tokens/s, MFU, peak memory.
- ``trl-dpo``: ``bench_trl.py``: one step of TRL's ``DPOTrainer`` with its own LM head and with
  ``SpotDPOTrainer`` (Qwen3-1.7B shape, vocabulary 151936): step time and peak memory side by side.
- ``train-steps``: 5 optimizer steps of ``spot_fast/train.py`` (built-in model, bf16, DeepSpeed) with
  ``--sync-debug warn``: every host-synchronisation site the loop hit.

Writes ``benchmarks/results/gpu-check-<device>-<UTC time>.json`` (every part's status, reason, time,
results and output tail) and a ``.md`` beside it with the short table, or under ``--out-dir``. Without
CUDA and without ``--dry-run`` it says so, with the installed torch and whether it is a CPU-only build
(the usual cause on a GPU node), writes nothing and exits 0. ``--dry-run`` runs every part's code path
on the CPU at toy sizes and says what each part did (``Part.dry_run``: the CUDA tests are only
collected, the LM head measures eager alone; FlexAttention's training step needs CUDA and is
skipped). A part fails when it exits other than 0, runs out of time, or exits 0 without results its
``read`` can find (no file, an empty one, no rows or test counts). The exit status is 1 when a part
failed or ran out of time.

Imports: every part runs this checkout's ``spot_fast`` and ``spot_kernels`` (the checkout is put
first on PYTHONPATH). ``--wheels DIR`` first installs the wheels in DIR (``make gpu-wheels``) into a
folder of this run (pip ``--no-index --no-deps --target``) and puts it on PYTHONPATH too: for a node
whose image has torch and triton but not DeepSpeed, Liger or this project's pinned transformers. Whether
a part's packages are there is asked of a Python started with that PYTHONPATH, as the part will be.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common import RESULTS_DIR, device_name, slug, utc_stamp

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "spot_fast" / "assets"
BUDGET_S = 450            # the parts' limits never add up to more (the whole stays under 8 minutes)
TAIL = 3000               # characters of each part's output kept in the JSON
MIN_PART_S = 5            # a part is not started with less time left
DRY_RUN_LIMIT_S = 600     # a dry run checks code paths on a CPU (perhaps a busy one): no budget, one loose limit


@dataclass
class Part:
    """A part of the check: ``command(work, dry_run)`` is its argv; ``read(work)`` its results (a dict)
    from what it wrote under ``work``, ValueError or OSError where there are none; ``needs`` the
    modules it imports; ``limit_s`` its time limit."""
    name: str
    needs: tuple
    limit_s: int
    command: object
    read: object
    cuda_only: str = ""   # the reason it cannot run in a dry run (on the CPU), if it cannot
    dry_run: str = ""     # what its dry run does, said in the report


def python(*args):
    return [sys.executable, *map(str, args)]


# ---------------------------------------------------------------- the parts

def cuda_test_files():
    """Test files that ask for CUDA (they name ``torch.cuda.is_available``)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "torch.cuda.is_available" in p.read_text(encoding="utf-8"))


def cuda_tests_command(work, dry_run):
    return python("-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *cuda_test_files(),
                  *(["--collect-only"] if dry_run else []))


def read_pytest(work):
    """Counts from pytest's last line, and the failed tests' names."""
    output = (work / "output.txt").read_text(encoding="utf-8", errors="replace")
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|tests? collected)", summary)}
    if not counts:
        raise ValueError(f"pytest's output ends without test counts: {summary!r}")
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return {"files": cuda_test_files(), "summary": summary, "counts": counts, "failed": failed}


def lm_head_command(work, dry_run):
    sizes = (["--device", "cpu", "--tokens", "64", "--hidden", "32", "--vocab", "512", "--methods", "eager",
              "--repeats", "1"] if dry_run else ["--tokens", "4096", "16384", "--repeats", "5"])
    return python(REPO / "benchmarks" / "bench_kernels.py", *sizes, "--out", work / "result.json")


def train_bench_command(attention):
    def command(work, dry_run):
        sizes = (["--device", "cpu", "--toy", "--pairs", "1", "--prompt-tokens", "8", "--answer-tokens", "24",
                  "--repeats", "1"] if dry_run else [])
        return python(REPO / "benchmarks" / "bench_train.py", "--attention", attention, "--fractions", "0.5",
                      *sizes, "--out", work / "result.json")
    return command


def trl_dpo_command(work, dry_run):
    sizes = ["--toy", "--pairs", "1", "--answer-tokens", "16", "--repeats", "1"] if dry_run else []
    return python(REPO / "benchmarks" / "bench_trl.py", *sizes, "--scratch", work / "scratch", "--out", work / "result.json")


def read_json(work):
    result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    if not result:
        raise ValueError("result.json holds no results")
    return result


def train_steps_command(work, dry_run):
    sizes = ["--bf16", "on", "--max-steps", "5"]
    if dry_run:  # four of the bundled pairs, one step of two micro-batches
        data = work / "pairs.jsonl"
        data.write_text("".join(open(ASSETS / "pairs.jsonl", encoding="utf-8").readlines()[:4]), encoding="utf-8")
        sizes = ["--bf16", "off", "--max-steps", "1", "--grad-accum", "2", "--per-device-batch", "2", "--data", data]
    return python(REPO / "spot_fast" / "train.py", "--output-dir", work / "run", "--sync-debug", "warn",
                  "--report-to", "none", "--log-every", "1", *sizes)


def read_train_steps(work):
    syncs = json.loads((work / "run" / "host_syncs.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    if not rows:
        raise ValueError("metrics.jsonl has no rows")
    return {"host_syncs": syncs, "last_row": rows[-1]}


PARTS = (
    Part("cuda-tests", ("pytest", "transformers"), 75, cuda_tests_command, read_pytest,
         dry_run="collected the CUDA tests, ran none"),
    Part("lm-head", ("tqdm",), 90, lm_head_command, read_json,
         dry_run="eager alone at a toy shape on the CPU, no fused kernel"),
    Part("train-bench-sdpa", ("transformers",), 50, train_bench_command("sdpa"), read_json,
         dry_run="every layout of a toy model on the CPU, times not meaningful"),
    Part("train-bench-varlen", ("transformers",), 50, train_bench_command("varlen"), read_json,
         dry_run="every layout of a toy model on the CPU through varlen's per-segment SDPA stand-in, times not "
                 "meaningful"),
    Part("train-bench-flex", ("transformers", "torch.nn.attention.flex_attention"), 80, train_bench_command("flex"),
         read_json, cuda_only="FlexAttention trains on CUDA only (no CPU backward)"),
    Part("trl-dpo", ("trl", "datasets", "transformers"), 40, trl_dpo_command, read_json,
         dry_run="both trainers' step on a toy model on the CPU, times and memory not meaningful"),
    Part("train-steps", ("deepspeed", "transformers", "yaml"), 65, train_steps_command, read_train_steps,
         dry_run="1 fp32 step of the built-in model on the CPU, host syncs not traced (no CUDA)"),
)


# ---------------------------------------------------------------- running them

FIND_MODULES = """import importlib.util, json, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False
print(json.dumps([name for name in sys.argv[1:] if not found(name)]))"""

VERSIONS = """import importlib.metadata as metadata, json, sys
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
print(json.dumps({name: version(name) for name in sys.argv[1:]}))"""


def ask_python(code, args, env):
    """What ``code`` prints last as JSON, run with ``args`` by a Python started here with environment
    ``env`` (a part's): what the parts can import is judged where they import it."""
    done = subprocess.run(python("-c", code, *args), cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"python -c failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def missing_modules(names, env=None):
    """Those of the modules ``names`` that a part run with environment ``env`` cannot find."""
    return ask_python(FIND_MODULES, names, env) if names else []


def run_part(part, work, env, dry_run, limit_s):
    """Runs ``part`` in its own process group (killed whole at the limit); returns its report entry."""
    entry = {"name": part.name, "limit_s": limit_s}
    if dry_run and part.cuda_only:
        return entry | {"status": "skipped", "reason": part.cuda_only}
    missing = missing_modules(part.needs, env)
    if missing:
        return entry | {"status": "skipped", "reason": f"needs {', '.join(missing)}: not importable "
                                                        f"(make install, or make gpu-wheels and --wheels)"}
    if limit_s < MIN_PART_S:
        return entry | {"status": "skipped", "reason": "no time left in the budget"}
    work.mkdir(parents=True)
    command = part.command(work, dry_run)
    entry["command"] = " ".join(command)
    began = time.perf_counter()
    with open(work / "output.txt", "w", encoding="utf-8") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    entry["seconds"] = round(time.perf_counter() - began, 1)
    entry["output_tail"] = (work / "output.txt").read_text(encoding="utf-8", errors="replace")[-TAIL:]
    try:
        entry["result"] = part.read(work)
    except (OSError, ValueError, IndexError) as error:
        entry["result"] = None
        entry["read_error"] = f"{type(error).__name__}: {error}"
    if code is None:
        return entry | {"status": "timed out", "reason": f"killed at its limit of {limit_s} s"}
    if code != 0:
        return entry | {"status": "failed", "exit_code": code, "reason": f"exit code {code}"}
    if "read_error" in entry:
        return entry | {"status": "failed", "exit_code": code, "reason": f"exited 0 without results: {entry['read_error']}"}
    if part.read is read_pytest and entry["result"]["failed"]:
        return entry | {"status": "failed", "exit_code": code, "reason": f"{len(entry['result']['failed'])} tests failed"}
    return entry | {"status": "ok", "exit_code": code} | ({"dry_run_did": part.dry_run} if dry_run else {})


def install_wheels(wheels, site):
    """pip-installs every wheel in ``wheels`` (no index, no dependencies) into ``site``."""
    found = sorted(Path(wheels).glob("*.whl"))
    if not found:
        raise SystemExit(f"error: --wheels {wheels}: no .whl files there (make gpu-wheels makes them)")
    subprocess.run(python("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--disable-pip-version-check", "--target", site, *found), check=True)


def import_paths(work, wheels):
    """The folders every part imports from first: this checkout (its ``spot_fast`` and ``spot_kernels``),
    then the installed wheels."""
    paths = [str(REPO)]
    if wheels:
        install_wheels(wheels, work / "site")
        paths.append(str(work / "site"))
    return paths


def package_versions(env):
    """The versions of the packages that matter here, as a part run with environment ``env`` finds them."""
    return ask_python(VERSIONS, ["torch", "triton", "transformers", "deepspeed", "liger-kernel", "pytest"], env)


# ---------------------------------------------------------------- report

def table(report):
    """The short table: one line per part, then the numbers worth a glance."""
    lines = [f"# GPU check: {report['device']} ({report['utc']}{', dry run' if report['dry_run'] else ''})", "",
             "versions: " + ", ".join(f"{k} {v or '-'}" for k, v in report["versions"].items()), "",
             "| part | status | seconds | note |", "| --- | --- | --- | --- |"]
    for part in report["parts"]:
        lines.append(f"| {part['name']} | {part['status']} | {part.get('seconds', '-')} | {summary(part)} |")
    for part in report["parts"]:
        lines += details(part)
    return "\n".join(lines) + "\n"


def summary(part):
    """One line on a part: why it failed or was skipped, else what its dry run did and its note."""
    if part.get("reason"):
        return part["reason"]
    said = [f"dry run: {part['dry_run_did']}"] if part.get("dry_run_did") else []
    return "; ".join(text for text in [*said, note(part)] if text)


def note(part):
    result = part.get("result") or {}
    if part["name"] == "cuda-tests":
        return result.get("summary", "")
    if part["name"] == "trl-dpo" and result.get("results"):
        rows = {row["trainer"]: row for row in result["results"]}
        trl, spot = rows["trl"], rows["spot_kernels"]
        return (f"SpotDPOTrainer: {spot['step_ms'] / trl['step_ms']:.2f} x TRL's step time, "
                f"{spot['workspace_mib'] / trl['workspace_mib']:.2f} x its workspace")
    if part["name"] == "train-steps" and result.get("host_syncs"):
        syncs = result["host_syncs"]
        calls = sum(site["calls"] for site in syncs["sites"])
        return f"{calls} host syncs at {len(syncs['sites'])} sites in {syncs['steps']} steps" if syncs["traced"] \
            else "host syncs not traced (no CUDA)"
    return ""


TRL_HEADS = {"trl": "TRL's own LM head", "spot_kernels": "SpotDPOTrainer (spot_kernels)"}


def details(part):
    result = part.get("result")
    if not result:
        return []
    lines = ["", f"## {part['name']}"]
    if part["name"] == "lm-head":
        for shape in result["shapes"]:
            for row in shape["results"]:
                lines.append(f"- N {row['tokens']} {row['method']}: " + (row["error"] if row.get("error") else
                             f"{row['time_ms']:.1f} ms ({row['time_vs_floor']:.2f} x floor), "
                             f"workspace {row['workspace_mib']:.0f} MiB"))
            lines += [f"- N {shape['tokens']} {method}: skipped ({reason})" for method, reason in shape["skipped"].items()]
    elif part["name"].startswith("train-bench"):
        for row in result["results"]:
            peak = "-" if row["peak_memory_bytes"] is None else f"{row['peak_memory_bytes'] / 2**30:.1f} GiB"
            lines.append(f"- {row['layout']}: {row['step_ms']:.0f} ms/step, {row['useful_tokens_per_s']:.0f} useful "
                         f"tok/s, effective MFU {row['effective_mfu']:.3f}, peak {peak}")
    elif part["name"] == "trl-dpo":
        lines.append(f"- TRL {result['trl']} DPOTrainer step, {result['rows']} rows, {result['tokens']} tokens, vocab "
                     f"{result['model']['vocab_size']}, hidden {result['model']['hidden_size']}, {result['dtype']}")
        lines += [f"- {TRL_HEADS[row['trainer']]}: {row['step_ms']:.0f} ms/step, workspace {row['workspace_mib']:.0f} MiB, "
                  f"loss {row['loss']:.6f}" for row in result["results"]]
    elif part["name"] == "train-steps":
        lines += [f"- {site['calls']} x {site['site']}" for site in result["host_syncs"]["sites"]]
    elif part["name"] == "cuda-tests":
        lines += [f"- failed: {name}" for name in result["failed"]]
    return lines


def torch_build():
    """The installed torch, and whether it is built for a GPU at all."""
    built_for = (f"CUDA {torch.version.cuda}" if torch.version.cuda else
                 f"ROCm {torch.version.hip}" if torch.version.hip else None)
    if built_for is None:
        return f"torch {torch.__version__} is a CPU-only build: on a GPU node, install a CUDA build of torch"
    return f"torch {torch.__version__} is built for {built_for} but sees no GPU (driver, CUDA_VISIBLE_DEVICES)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: every part's code path")
    parser.add_argument("--wheels", type=Path, help="folder of wheels to import from (make gpu-wheels)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the JSON and the table go")
    args = parser.parse_args(argv)
    on_cuda = torch.cuda.is_available()
    if not on_cuda and not args.dry_run:
        print(f"gpu-check: no CUDA device here ({torch_build()}); nothing to check (--dry-run runs toy sizes on "
              f"the CPU)")
        return 0
    utc = utc_stamp()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        paths = import_paths(work, args.wheels)
        device = device_name(torch.device("cuda" if on_cuda and not args.dry_run else "cpu"))
        report = {"device": device, "utc": utc, "dry_run": args.dry_run, "budget_s": BUDGET_S, "parts": []}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   PYTHONUNBUFFERED="1")
        if args.dry_run:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a GPU node
        report["versions"] = package_versions(env)
        for part in PARTS:
            left = BUDGET_S - (time.perf_counter() - began)
            limit_s = DRY_RUN_LIMIT_S if args.dry_run else min(part.limit_s, int(left))
            print(f"gpu-check: {part.name} (limit {limit_s} s) ...", flush=True)
            entry = run_part(part, work / part.name, env, args.dry_run, limit_s)
            said = summary(entry)
            print(f"gpu-check: {part.name}: {entry['status']}{f' ({said})' if said else ''}", flush=True)
            report["parts"].append(entry)
    report["seconds"] = round(time.perf_counter() - began, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"gpu-check-{'dry-run-' if args.dry_run else ''}{slug(device)}-{utc}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(table(report), encoding="utf-8")
    print(table(report))
    print(f"gpu-check: wrote {stem}.json and .md in {report['seconds']} s")
    return 1 if any(part["status"] in ("failed", "timed out") for part in report["parts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
