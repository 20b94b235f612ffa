"""Compile every LM-head kernel variant ahead of time for CUDA targets, without a GPU or a driver.

    python tests/helpers/aot_compile.py REPORT.json 90 80      # TRITON_INTERPRET must be unset

A stand-in Triton driver reports ``GPUTarget("cuda", arch, 32)`` (device id = arch, so each target
has its own kernel caches). The real host code of the ``triton`` backend then runs on meta tensors:
``triton_forward`` and the backward driver with ``triton_dlogits``, exactly as
``_FusedLinearLogprobs`` calls them, for every dtype, with and without bias and stats, at an aligned
and a ragged shape. Each launch goes through Triton's launch path (autotuning included: the
stand-in benchmarker calls every configuration once and rates them equal), so every configuration
the host can launch is compiled with its launch options. Loading a binary on the stand-in reads
its registers and stack frame with cuobjdump (the real driver reports the stack as local memory,
``n_spills`` = bytes / 4). Launching does nothing.

The JSON report lists, per target: every compiled kernel (name, dtype, constexprs, warps, stages,
registers, stack bytes, shared memory, whether it was loaded, whether its PTX has wgmma), how many
kernels the ragged shape added, and any error raised while tuning (the autotuner would drop a
configuration that fails to compile or does not fit; here that is an error).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from spot_kernels import triton_linear_logprobs as fused
from spot_kernels.backward import accumulate_gradients

MAX_SHARED_BYTES = {90: 232448, 80: 166912}  # opt-in shared memory per block
SHAPES = {"aligned": (4096, 4096, 151936), "ragged": (1003, 4096, 32003)}  # (N, H, V)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin):
    """(registers, stack bytes) of the single function in ``cubin``, from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return int(match.group(1)), int(match.group(2))


class StandInUtils:
    def __init__(self, arch):
        self.arch = arch

    def get_device_properties(self, device):
        return {"max_shared_mem": MAX_SHARED_BYTES[self.arch], "multiprocessor_count": 132, "max_num_regs": 65536,
                "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}

    def load_binary(self, name, cubin, shared, device):
        registers, stack_bytes = resource_usage(cubin)
        return 0, 0, registers, stack_bytes // 4, 1024


class StandInLauncher:
    def __init__(self, src, metadata):
        pass

    def __call__(self, *args):
        pass


class StandInDriver:
    """Just enough of Triton's CUDA driver for the host code to compile and 'launch' kernels."""

    def __init__(self, arch):
        self.target = GPUTarget("cuda", arch, 32)
        self.utils = StandInUtils(arch)
        self.launcher_cls = StandInLauncher
        self.errors = []

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.target.arch

    def get_current_stream(self, device=None):
        return 0

    def get_benchmarker(self):
        return self.benchmark

    def benchmark(self, kernel_call, quantiles):
        try:
            kernel_call()
        except Exception as error:  # the autotuner would silently drop this configuration
            self.errors.append(f"{type(error).__name__}: {error}"[:2000])
            raise
        return [1.0, 1.0, 1.0]


def run_host_code(dtype, shape, bias, with_stats):
    """The triton backend's forward (and, without stats, backward) on meta tensors."""
    num_tokens, hidden_size, vocab_size = shape
    meta = dict(device="meta", dtype=dtype)
    hidden, weight = torch.empty(num_tokens, hidden_size, **meta), torch.empty(vocab_size, hidden_size, **meta)
    b = torch.empty(vocab_size, **meta) if bias else None
    targets = torch.empty(num_tokens, dtype=torch.int64, device="meta")
    _, lse, _, _ = fused.triton_forward(hidden, weight, b, targets, with_stats)
    if not with_stats:
        grad = torch.empty(num_tokens, dtype=torch.float32, device="meta")
        accumulate_gradients(hidden, weight, b, targets, lse, grad, (True, True, bias), fused.triton_dlogits,
                             *fused.backward_chunk_sizes(num_tokens, vocab_size))


def compiled_kernels(device):
    """Every kernel compiled for ``device``, described for the report."""
    described = []
    for jit in (fused._partial_forward_kernel, fused._merge_kernel, fused._dlogits_kernel):
        for kernel in jit.device_caches[device][0].values():
            constants = {jit.arg_names[path[0]]: value for path, value in kernel.src.constants.items()
                         if isinstance(value, (bool, int, str))}
            described.append({
                "kernel": jit.__name__, "dtype": kernel.src.signature.get("hidden_ptr", "-"),
                "constants": constants, "num_warps": kernel.metadata.num_warps,
                "num_stages": kernel.metadata.num_stages, "shared_bytes": kernel.metadata.shared,
                "loaded": hasattr(kernel, "n_regs"), "registers": getattr(kernel, "n_regs", None),
                "stack_bytes": 4 * kernel.n_spills if hasattr(kernel, "n_spills") else None,
                "wgmma": "wgmma" in kernel.asm["ptx"],
            })
    return described


def compile_for(arch):
    stand_in = StandInDriver(arch)
    driver.set_active(stand_in)
    counts = {}
    for shape_name, shape in SHAPES.items():
        for dtype in DTYPES:
            for bias in (False, True):
                for with_stats in (False, True):
                    run_host_code(dtype, shape, bias, with_stats)
        counts[shape_name] = len(compiled_kernels(arch))
    return {"kernels": compiled_kernels(arch), "errors": stand_in.errors,
            "added_by_ragged_shape": counts["ragged"] - counts["aligned"]}


def main():
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("aot_compile.py compiles real kernels: run it with TRITON_INTERPRET unset")
    report_path, archs = sys.argv[1], [int(arch) for arch in sys.argv[2:]]
    report = {str(arch): compile_for(arch) for arch in archs}
    with open(report_path, "w") as out:
        json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
