"""Test configuration. Without a GPU, Triton kernels run in the interpreter; TRITON_INTERPRET must be
set before any ``@triton.jit`` function is defined, so it is set here, before test modules import.

Put on ``sys.path`` here, so that tests import their modules by name:
- tests/helpers/: what the tests use that is not a test (reference computations, ``from hf_logps import
  ...``, and programs the tests run as subprocesses, by path). A subprocess that imports one of them by
  name gets the folder on PYTHONPATH.
- benchmarks/: the benchmark scripts the tests import (``import bench_flops``) and their ``common``.
"""
import os
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS / "helpers"), str(TESTS.parent / "benchmarks")]

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
