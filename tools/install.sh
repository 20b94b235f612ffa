#!/usr/bin/env bash
# Creates the virtual environment and installs spot-fast with pinned dependencies.
#
# Usage: tools/install.sh PYTHON VENV
#
# Invariants:
# - A torch (and triton) that is already importable, e.g. a CUDA build on a GPU node, is kept:
#   the venv sees system packages and every install runs under a constraint pinning it.
# - Where no torch exists, the CPU build torch==2.13.0 is installed; no CUDA wheel is pulled.
# - DeepSpeed is built against that torch (no build isolation), never against a fresh one.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

[ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check -q)
constraints="$venv/constraints.txt"

version_of() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null; }

if torch_version=$(version_of torch); then
    echo "install: keeping the installed torch $torch_version"
    echo "torch==$torch_version" > "$constraints"
    if triton_version=$(version_of triton); then
        echo "triton==$triton_version" >> "$constraints"
    else
        grep '^triton==' requirements/cpu-torch.txt >> "$constraints"
    fi
else
    echo "install: no torch found; installing the CPU build"
    grep -v '^#' requirements/cpu-torch.txt > "$constraints"
    "${pip[@]}" -c "$constraints" torch
fi
"${pip[@]}" -c "$constraints" triton setuptools wheel
"${pip[@]}" -c "$constraints" -r requirements/base.txt
"${pip[@]}" -c "$constraints" --no-build-isolation deepspeed==0.19.8
"${pip[@]}" -c "$constraints" --no-build-isolation --no-deps -e .
