"""Checks that two training runs trained the same (1 vs 2 processes, ZeRO stages, LoRA): the same
logged metrics at every step, and final weights equal up to float noise (importable from tests:
tests/conftest.py puts this folder on ``sys.path``)."""
import json
from pathlib import Path

import pytest
import torch


def logged_steps(output_dir):
    """The training rows of a run's ``metrics.jsonl`` (those with a loss)."""
    return [json.loads(line) for line in open(Path(output_dir) / "metrics.jsonl") if "loss" in line]


def assert_same_steps(rows, expected, keys, context=()):
    """The same steps, and each of ``keys`` equal at every step to 1e-5 (rel or abs)."""
    assert [r["step"] for r in rows] == [r["step"] for r in expected], context
    for mine, theirs in zip(rows, expected):
        for key in keys:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-5), (*context, mine["step"], key)


def assert_same_weights(got, expected, bound, context=(), noise=1e-5):
    """The same tensors, at least 99.9% of elements within ``noise`` and all within ``bound``. The rest are
    elements whose gradient is at float-noise level, where Adam's m / sqrt(v) turns reassociation noise
    into a step of up to +-lr: ``bound`` is lr times the steps taken. Adam moves every element by about
    lr per step whatever its gradient's size, so float noise in the weights scales with lr: ``noise``
    is 1% of one step, 1e-5 at the learning rate 1e-3 most runs compared here use."""
    assert sorted(got) == sorted(expected), context
    differences = torch.cat([(got[k].float() - expected[k].float()).abs().flatten() for k in expected])
    assert (differences > noise).float().mean() < 1e-3, (*context, f"{int((differences > noise).sum())} of "
                                                         f"{differences.numel()} elements differ by more than {noise}")
    assert differences.max() < bound, context
