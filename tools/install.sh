#!/usr/bin/env bash
# Creates the virtual environment and installs spot-fast with pinned dependencies.
#
# Usage: [TORCH_INDEX_URL=URL] tools/install.sh PYTHON VENV
#
# Invariants:
# - A torch (and triton) that is already importable, e.g. a CUDA build on a GPU node, is kept:
#   the venv sees system packages and every install runs under a constraint pinning it.
# - Where no torch exists, torch==2.13.0 is installed: the build pip finds first, i.e. a local CPU
#   wheel where pip's configuration offers one (find-links), else the package index's, which on Linux
#   is the CUDA build. TORCH_INDEX_URL, when set, is the only index for that one install (pip
#   --index-url), so it chooses the build (a CPU-only or CUDA-version wheel index).
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
    echo "install: no torch found; installing torch ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL}"
    grep -v '^#' requirements/cpu-torch.txt > "$constraints"
    echo "install: torch is large (hundreds of MB to GBs with the CUDA libraries); pip is quiet while it downloads"
    "${pip[@]}" -c "$constraints" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
fi
echo "install: [1/4] triton, setuptools, wheel"
"${pip[@]}" -c "$constraints" triton setuptools wheel
echo "install: [2/4] the pinned requirements (requirements/base.txt: transformers, TensorBoard, ...; a few minutes on a fresh machine)"
"${pip[@]}" -c "$constraints" -r requirements/base.txt
echo "install: [3/4] DeepSpeed 0.19.8, built against this torch (a minute or two)"
"${pip[@]}" -c "$constraints" --no-build-isolation deepspeed==0.19.8
echo "install: [4/4] spot-fast itself (editable)"
"${pip[@]}" -c "$constraints" --no-build-isolation --no-deps -e .
echo "install: done; $venv is ready (the first training run on a CPU also builds DeepSpeed's communication op once, a minute or more)"
