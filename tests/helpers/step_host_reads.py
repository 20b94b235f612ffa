"""Host reads of one training step of real runs, by call site (run by tests/test_host_sync.py).

    python tests/helpers/step_host_reads.py OUT.json OUTPUT_ROOT 'FLAGS' ['FLAGS' ...]

For each set of train.py flags (one string each): sets up the run (built-in model, bundled pairs,
DeepSpeed in this process), runs one ``optimizer_step`` under ``HostReads`` (counting the linear
layers' matmuls it dispatches) and then the logged row (``MetricsWindow.row`` with the gradient norm)
under another, and writes ``{FLAGS: {"step": {site: calls}, "matmuls": n, "row": {site: calls},
"row_names": [...]}}`` to OUT.json. The runs share one process group (DeepSpeed keeps its groups
across a destroyed process group, so a second engine after ``stop_distributed`` fails): it is
destroyed once, at the end.
"""
import json
import shlex
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spot_fast import train as train_module
from spot_fast.config import parse_config
from spot_fast.engine import stop_distributed
from spot_fast.metrics import MetricsWindow

from host_reads import HostReads


class Matmuls(TorchDispatchMode):
    """Counts ``aten.mm`` and ``aten.addmm`` calls (the linear layers; a recompute runs them again)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


def host_reads_of_a_step(flags, output_dir):
    config = parse_config(["--output-dir", str(output_dir), "--report-to", "none", *flags])
    run = train_module.set_up(config)
    window = MetricsWindow()
    with HostReads(run.engine.module.parameters()) as step_reads, Matmuls() as matmuls:
        train_module.optimizer_step(run, 0, window)
    grad_norm = run.engine.get_global_grad_norm()
    with HostReads([v for v in (*window.sums.values(), grad_norm) if isinstance(v, torch.Tensor)]) as row_reads:
        row = window.row(run.world, {"grad_norm": grad_norm})
    return {"step": dict(step_reads.sites), "matmuls": matmuls.calls, "row": dict(row_reads.sites),
            "row_names": sorted(row)}


def main(out, output_root, *runs):
    results = {}
    try:
        for number, flags in enumerate(runs):
            results[flags] = host_reads_of_a_step(shlex.split(flags), Path(output_root) / f"run-{number}")
    finally:
        stop_distributed()
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
