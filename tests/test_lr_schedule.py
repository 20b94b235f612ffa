"""The learning-rate schedule is transformers' cosine with warmup, step for step (the SPoT reference
recipe ran on it), with transformers' warmup length ceil(ratio * total)."""
import pytest
import torch
from transformers import TrainingArguments, get_cosine_schedule_with_warmup

from spot_fast.engine import cosine_schedule, warmup_steps


def rates(make_scheduler, total):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = make_scheduler(optimizer)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("total, ratio", [(10, 0.05), (100, 0.05), (251, 0.1), (7, 0.0), (12, 0.5), (13, 0.99)])
def test_matches_transformers_cosine_with_warmup(total, ratio, tmp_path):
    warmup = warmup_steps(total, ratio)
    assert warmup == TrainingArguments(output_dir=str(tmp_path), warmup_steps=ratio, report_to=[]).get_warmup_steps(total)
    ours = rates(lambda opt: cosine_schedule(opt, total, ratio), total)
    theirs = rates(lambda opt: get_cosine_schedule_with_warmup(opt, warmup, total), total)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-18)
    if warmup:
        assert ours[0] == 0.0  # step 0 trains at rate 0, as transformers does
