# make test   - set up .venv (pinned, CPU torch unless a torch is already installed) and run the tests
# make demo   - set up .venv and run the default SPoT training job (tiny model, bundled data) into
#               outputs/spot, replacing the previous demo's results there
# make bench  - run the kernel benchmark (GPU shapes on CUDA, reduced shapes on CPU); writes a new
#               benchmarks/results/<device>-<UTC time>.json, never over a committed result
# make flops  - count the FLOPs of a SPoT job, the release's recipe against spot-fast, on 8B shapes
#               (benchmarks/bench_flops.py, any machine, minutes); writes benchmarks/results/flops.{json,md}
# make claims - run the controlled SPoT experiment (benchmarks/spot_claims.py, CPU, resumable); writes
#               benchmarks/results/spot_claims.{json,md,png}
# make gpu-check  - on a GPU node: the CUDA tests, the LM-head and trainer benchmarks and 5 traced DeepSpeed
#                   steps (benchmarks/gpu_check.py, < 8 min on one H100); writes
#                   benchmarks/results/gpu-check-<device>-<UTC time>.{json,md}; without CUDA does nothing
# make gpu-wheels - download (and build, for DeepSpeed) into gpu-wheels/ the wheels a node with only torch and
#                   triton lacks, for `python3 benchmarks/gpu_check.py --wheels gpu-wheels` there;
#                   GPU_WHEELS_OPTIONS="--omit numpy matplotlib" leaves out packages the node already has
# TORCH_INDEX_URL=URL (variable or environment): the index torch is installed from where none is (tools/install.sh)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench flops claims gpu-check gpu-wheels clean

install: $(STAMP)

$(STAMP): setup.py requirements/base.txt requirements/cpu-torch.txt tools/install.sh
	bash tools/install.sh $(PYTHON) $(VENV)
	touch $@

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) spot_fast/train.py --overwrite

bench: install
	$(PY) benchmarks/bench_kernels.py

flops: install
	$(PY) benchmarks/bench_flops.py

claims: install
	$(PY) benchmarks/spot_claims.py

gpu-check: install
	$(PY) benchmarks/gpu_check.py

gpu-wheels: install
	$(PY) tools/gpu_wheels.py gpu-wheels $(GPU_WHEELS_OPTIONS)

clean:
	rm -rf $(VENV) build *.egg-info
