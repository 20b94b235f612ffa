"""``--sync-debug warn``: every place the training loop makes the host wait for the GPU, by call site.

On CUDA, torch's sync debug mode (``torch.cuda.set_sync_debug_mode("warn")``) warns at each
synchronising call (a value read to the host, a blocking copy, a stream or device synchronise; torch
does not cover ``torch.distributed``). ``HostSyncs`` turns it on around the training steps and, instead
of printing the warnings, counts them by call site: the innermost frame outside torch, and the
innermost frame in this project (``spot_fast/``, ``spot_kernels/``) when that is another, so that a
DeepSpeed or transformers site names the line of ours that led to it. ``write`` saves the sites,
most frequent first, to ``OUTPUT_DIR/host_syncs.json`` (``benchmarks/gpu_check.py`` reads it).
Elsewhere than CUDA nothing is traced and the file says so.
"""
import json
import traceback
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

TORCH_DIR = str(Path(torch.__file__).parent)
PROJECT_DIRS = tuple(str(Path(__file__).resolve().parents[1] / folder) + "/" for folder in ("spot_fast", "spot_kernels"))
SYNC_WARNING = "synchroniz"  # torch: "called a synchronizing CUDA operation"


def call_site(stack):
    """``file:line (function)`` of the innermost frame of ``stack`` outside torch, and ``via`` the
    innermost frame in this project where that is another frame."""
    frames = [f for f in stack if not f.filename.startswith(TORCH_DIR) and f.filename not in (__file__, warnings.__file__)]
    if not frames:
        return "?"
    describe = lambda f: f"{Path(f.filename).resolve()}:{f.lineno} ({f.name})"  # noqa: E731
    site = describe(frames[-1])
    ours = [f for f in frames if str(Path(f.filename).resolve()).startswith(PROJECT_DIRS)]
    if ours and ours[-1] is not frames[-1]:
        site += f" via {describe(ours[-1])}"
    return site


class HostSyncs:
    """Counts of synchronising calls by ``call_site`` while ``traced()`` is active (CUDA only)."""

    def __init__(self, device):
        self.enabled = device.type == "cuda"
        self.sites = Counter()

    @contextmanager
    def traced(self):
        if not self.enabled:
            yield
            return
        shown = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if SYNC_WARNING in str(message).lower():
                self.sites[call_site(traceback.extract_stack()[:-1])] += 1
            else:
                shown(message, category, filename, lineno, file, line)

        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=f"(?i).*{SYNC_WARNING}")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")

    def write(self, path, steps):
        """``path``: ``{"traced", "steps", "sites": [{"site", "calls"}]}``, most calls first; prints a summary."""
        sites = [{"site": site, "calls": calls} for site, calls in self.sites.most_common()]
        Path(path).write_text(json.dumps({"traced": self.enabled, "steps": steps, "sites": sites}, indent=1) + "\n")
        if not self.enabled:
            print(f"--sync-debug: torch's sync debug mode needs CUDA; nothing was traced ({path})")
            return
        print(f"--sync-debug: {sum(self.sites.values())} synchronising calls at {len(sites)} sites in {steps} steps "
              f"(written to {path})")
        for entry in sites:
            print(f"  {entry['calls']:5d}  {entry['site']}")
