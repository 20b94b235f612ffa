"""Gradient accumulation in fp32 under bf16: the configuration DeepSpeed receives, and the sum of 8
micro-batch gradients through the real engine (tests/helpers/grad_accum_engine.py, one process, ~40 s on 2 cores)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spot_fast.config import TrainConfig
from spot_fast.engine import deepspeed_config, grad_accum_note

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_the_engine_is_told_to_accumulate_in_fp32(stage):
    engine_config = deepspeed_config(TrainConfig(zero_stage=stage), True, torch.device("cpu"), 64)
    if stage == 0:  # DeepSpeed 0.19.8 refuses another accumulation dtype without ZeRO
        assert "data_types" not in engine_config
        assert "bf16" in grad_accum_note(TrainConfig(zero_stage=0), True)
    else:
        assert engine_config["data_types"] == {"grad_accum_dtype": "fp32"}
        assert grad_accum_note(TrainConfig(zero_stage=stage), True) is None
    assert engine_config.get("communication_data_type") == ("fp32" if stage == 1 else None)


def test_eight_bf16_micro_batches_sum_as_one_fp32_sum(tmp_path):
    out = tmp_path / "errors.json"
    result = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "grad_accum_engine.py"), str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(out.read_text())
    for stage in (1, 2, 3):  # fp32 rounding of the update (weight - gradient) alone: ~2e-5
        assert errors[f"zero-{stage}"] < 1e-4, errors
    assert errors["zero-2, DeepSpeed's default accumulation dtype"] > 3e-3, errors  # bf16 sums are visibly off
