"""Test configuration. Without a GPU, Triton kernels run in the interpreter; TRITON_INTERPRET must be
set before any ``@triton.jit`` function is defined, so it is set here, before test modules import.

tests/helpers/ holds what the tests use that is not a test (reference computations, programs the tests
run as subprocesses, by path); it is put on ``sys.path`` here, so that tests import its modules by name
(``from hf_logps import ...``). A subprocess that imports one of them by name gets the folder on
PYTHONPATH."""
import os
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "helpers"))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
