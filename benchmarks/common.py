"""What the benchmark scripts share: where results go and how they are written, the device's name,
timing, and resident-set readings. Imported by the scripts beside it as ``common`` (a script run as
``python benchmarks/x.py`` has this folder first on its import path). Importing it needs only the
standard library (torch is imported where a CUDA device is asked about), and nothing of this project:
``gpu_check.py`` imports it before it knows what its parts can import.
"""
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- device and results

def device_name(device):
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (platform.processor() as fallback)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def utc_stamp():
    """The UTC time now, as result file names carry it: 20260101T120000Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def new_results_path(device, prefix=""):
    """``results/<prefix><device slug>-<UTC time>.json``: beside the committed results, never over one."""
    return RESULTS_DIR / f"{prefix}{slug(device)}-{utc_stamp()}.json"


def write_results(report, prefix, out=None):
    """Writes ``report`` as JSON to ``out``, or where that is None to a new results file named by
    ``prefix`` and the report's device (``new_results_path``); says where, and returns the path."""
    out = out or new_results_path(report["device"]["name"], prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def write_report(report, table, stem):
    """Writes ``report`` as ``stem``.json and its markdown ``table`` as ``stem``.md; says where on stderr."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)
    print(f"results written to {stem.with_suffix('.json')} and {stem.with_suffix('.md')}", file=sys.stderr)


def cell(value, spec):
    """``value`` formatted by ``spec``, or "-" where there is none."""
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------- time

def median_ms(fn, repeats, device):
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after one warm-up call (CUDA events
    on a GPU, ``time.perf_counter`` elsewhere)."""
    if device.type == "cuda":
        import torch
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------- resident set (Linux)

def proc_status_bytes(field):
    """A size field of /proc/self/status (``VmRSS``, ``VmHWM``, ...), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_resident():
    """Set this process's VmHWM back to its current VmRSS (write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
