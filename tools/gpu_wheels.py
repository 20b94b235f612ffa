"""Wheels for a GPU node that has torch and triton but not the rest (``make gpu-wheels``).

    python tools/gpu_wheels.py DIR [--python-version 3.12] [--omit NAME ...]

Which: the packages ``benchmarks/gpu_check.py``'s parts import (``ROOTS``) and everything they require
(markers judged for CPython ``--python-version`` on Linux x86-64), at the versions installed in this
environment (the ones ``make`` pins), less torch, triton and everything those two require (the node
has them), less ``--omit`` and everything those require (packages the node's image already has, to
carry less). DIR's old wheels are removed first (two versions of one package stop the install). How: each is
downloaded as a wheel for that Python on manylinux x86-64 (``pip download --no-deps
--only-binary=:all:``); DeepSpeed, published as source only, is built here into a pure-Python wheel
(``DS_BUILD_OPS=0``: its C++/CUDA ops are built just in time where needed, and the trainer needs none).
Prints the wheels and their total size. On the node, from the checkout:
``python3 benchmarks/gpu_check.py --wheels DIR``.
"""
import argparse
import importlib.metadata as metadata
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("transformers", "tokenizers", "huggingface-hub", "safetensors", "peft", "liger-kernel", "deepspeed", "trl",
         "pyyaml", "tqdm", "numpy", "matplotlib", "pytest", "pytest-timeout")
NODE_HAS = ("torch", "triton")
BUILT_HERE = ("deepspeed",)  # source-only on the package index
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def requirements(name, environment):
    """The distributions ``name`` requires in ``environment`` (no extras)."""
    found = []
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment | {"extra": ""}):
            found.append(canonicalize_name(requirement.name))
    return found


def closure(names, environment):
    """``names`` and everything they require, transitively, as canonical names."""
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += requirements(name, environment)
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--python-version", default="3.12", help="the node's Python (default: 3.12)")
    parser.add_argument("--omit", nargs="*", default=[], help="packages the node already has (installed here too)")
    args = parser.parse_args(argv)
    environment = {"python_version": args.python_version, "python_full_version": f"{args.python_version}.0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    wanted = closure(ROOTS, environment) - closure((*NODE_HAS, *args.omit), environment)
    pinned = sorted(f"{name}=={metadata.version(name)}" for name in wanted if name not in BUILT_HERE)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", args.python_version,
                    "--implementation", "cp", *platforms, "-d", str(args.out), *pinned], check=True)
    for name in sorted(wanted & set(BUILT_HERE)):
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(args.out),
                        f"{name}=={metadata.version(name)}"], check=True, env=dict(os.environ, DS_BUILD_OPS="0"))
    wheels = sorted(args.out.glob("*.whl"))
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.1f} MiB  {wheel.name}")
    print(f"{sum(w.stat().st_size for w in wheels) / 2**20:7.1f} MiB in {len(wheels)} wheels in {args.out}; on the node: "
          f"python3 benchmarks/gpu_check.py --wheels {args.out}")


if __name__ == "__main__":
    main()
