"""The triton backend compiles for sm_90 and sm_80 ahead of time, without a GPU (docs/design.md section 7).

``tests/helpers/aot_compile.py`` runs the backend's real host code on meta tensors under a stand-in Triton
driver that reports ``GPUTarget("cuda", arch, 32)``, so every launch, autotuning included, compiles
its kernel with its exact launch configuration (see that file). It runs in subprocesses, one per
target and in parallel, with TRITON_INTERPRET unset (this suite sets it for every other test) and
one Triton cache in a temporary directory.

Criteria, per target:
- nothing failed while tuning, and every compiled kernel fits the target (it was loaded);
- the compiled kernels are exactly what the host launches: every (kernel, dtype, bias, stats)
  with every configuration of its tile space (``CONFIGS``: the autotune space for bf16/fp16, the
  single fp32 configuration), with those warps and stages, and nothing else;
- the ragged shape (N=1003, V=32003) runs on the binaries of the aligned one (no kernel added);
- zero bytes of stack (register spills) for every kernel: bf16/fp16 and the fp32 configuration;
- on sm_90 every bf16/fp16 matmul kernel issues wgmma; on sm_80 none can.
"""
import json
import os
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from spot_kernels.triton_linear_logprobs import CONFIGS

SCRIPT = Path(__file__).resolve().parent / "helpers" / "aot_compile.py"
TARGETS = {90: "sm90", 80: "sm80"}
LOW_PRECISION = ("*bf16", "*fp16")


def expected_kernels(config_set):
    """Counter of (kernel, dtype, has_bias, with_stats, tiles, num_warps, num_stages) the host launches."""
    expected = Counter()
    for dtype in LOW_PRECISION + ("*fp32",):
        configs = CONFIGS["fp32" if dtype == "*fp32" else config_set]
        for bias in (False, True):
            for config in configs["dlogits"]:
                expected[("_dlogits_kernel", dtype, bias, None, tuple(sorted(config.kwargs.items())),
                          config.num_warps, config.num_stages)] += 1
            for stats in (False, True):
                for config in configs["forward"]:
                    expected[("_partial_forward_kernel", dtype, bias, stats, tuple(sorted(config.kwargs.items())),
                              config.num_warps, config.num_stages)] += 1
    return expected


def described(kernel):
    constants = kernel["constants"]
    tiles = tuple(sorted((name, value) for name, value in constants.items()
                         if name in ("BLOCK_N", "BLOCK_V", "BLOCK_H", "GROUP_N")))
    return (kernel["kernel"], kernel["dtype"], constants.get("HAS_BIAS"), constants.get("WITH_STATS"), tiles,
            kernel["num_warps"], kernel["num_stages"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aot")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
    runs = {arch: subprocess.Popen([sys.executable, str(SCRIPT), str(tmp / f"{arch}.json"), str(arch)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for arch in TARGETS}
    merged = {}
    for arch, run in runs.items():
        output, _ = run.communicate(timeout=900)
        assert run.returncode == 0, f"ahead-of-time compile for sm_{arch} failed:\n{output[-4000:]}"
        merged.update(json.loads((tmp / f"{arch}.json").read_text()))
    return merged


pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                                reason="ptxas and cuobjdump in the Triton wheel are linux-x86_64 binaries")


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_every_launched_variant_compiles_and_fits(report, arch):
    target = report[str(arch)]
    assert target["errors"] == []
    not_loaded = [described(k) for k in target["kernels"] if not k["loaded"]]
    assert not_loaded == [], f"compiled but do not fit sm_{arch}: {not_loaded}"
    matmul_kernels = Counter(described(k) for k in target["kernels"] if k["kernel"] != "_merge_kernel")
    expected = expected_kernels(TARGETS[arch])
    assert matmul_kernels == expected, (f"missing: {sorted(expected - matmul_kernels)}\n"
                                        f"unexpected: {sorted(matmul_kernels - expected)}")
    merges = sorted(k["constants"]["WITH_STATS"] for k in target["kernels"] if k["kernel"] == "_merge_kernel")
    assert merges == [False, True]
    assert target["added_by_ragged_shape"] == 0


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_no_register_spills(report, arch):
    spilling = [(described(k), k["registers"], k["stack_bytes"]) for k in report[str(arch)]["kernels"]
                if k["stack_bytes"] != 0]
    assert spilling == [], f"kernels with a stack frame (spilled registers) on sm_{arch}: {spilling}"


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_wgmma_exactly_on_hopper(report, arch):
    kernels = report[str(arch)]["kernels"]
    low_precision_matmuls = [k for k in kernels if k["dtype"] in LOW_PRECISION]
    assert low_precision_matmuls, "no bf16/fp16 kernel was compiled"
    with_wgmma = [described(k) for k in low_precision_matmuls if k["wgmma"]]
    if arch >= 90:
        assert len(with_wgmma) == len(low_precision_matmuls), "bf16/fp16 matmul kernels without wgmma on sm_90"
    else:
        assert with_wgmma == []
