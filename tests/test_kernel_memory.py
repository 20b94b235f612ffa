"""The chunked backend's memory bound on CPU, measured the way benchmarks/bench_kernels.py measures it.

Criterion: forward + backward of ``linear_logprobs`` with backend ``chunked`` at N=2048, H=512,
V=32000 fp32 needs a peak workspace under 10% of the ``eager`` backend's. Workspace is the peak
resident memory of a fresh subprocess during one run, minus the inputs and the two gradients every
method returns (see ``measure_cpu_workspace`` in the benchmark). Eager holds [N, V] fp32 logits
(250 MiB here) and more; a chunked path that formed anything [N, V]-sized would exceed 10%.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
TOKENS, HIDDEN, VOCAB = 2048, 512, 32000


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status and /proc/self/clear_refs")
def test_chunked_workspace_is_under_ten_percent_of_eager():
    bench = load_benchmark()
    eager = bench.measure_cpu_workspace("eager", TOKENS, HIDDEN, VOCAB, "fp32")["workspace_bytes"]
    chunked = bench.measure_cpu_workspace("chunked", TOKENS, HIDDEN, VOCAB, "fp32")["workspace_bytes"]
    logits_bytes = TOKENS * VOCAB * 4
    # The measurement itself must see eager's materialized logits, or the comparison below means nothing.
    assert eager >= logits_bytes, f"eager workspace {eager / 2**20:.1f} MiB is below its own logits' size"
    assert chunked < 0.1 * eager, (
        f"chunked workspace {chunked / 2**20:.1f} MiB is {chunked / eager:.1%} of eager's {eager / 2**20:.1f} MiB")
