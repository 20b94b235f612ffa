"""Sums of micro-batch gradients through the real DeepSpeed engine in bf16, run by test_grad_accum.py:

    python tests/helpers/grad_accum_engine.py OUT.json

For ZeRO-1, 2 and 3 (one process, gloo, CPU), the built-in model in bf16 goes through an engine
configured by the trainer's ``deepspeed_config`` (grad_accum 8, no clipping) with plain SGD at
learning rate 1, so the step moves each fp32 master weight by exactly the gradient the optimizer
received. The micro-batches' own bf16 gradients are captured by tensor hooks as autograd produces
them and summed in fp32; OUT.json gets, per stage, the largest difference between the update and that
sum, relative to the sum's largest element. A control run takes the ZeRO-2 configuration without its
``data_types`` (DeepSpeed's default: accumulate in the model's dtype) to show the measurement sees bf16
accumulation.
"""
import json
import sys

import deepspeed
import torch
from deepspeed.utils import safe_get_full_fp32_param

from spot_fast.config import TrainConfig
from spot_fast.engine import deepspeed_config, start_distributed
from spot_fast.models import BUILTIN_MODEL, hidden_size, load_model

MICRO_BATCHES = 8


def token_batches():
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 200, (2, 48), generator=generator) for _ in range(MICRO_BATCHES)]


def next_token_loss(model, ids):
    logits = model(ids).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def accumulation_error(engine_config):
    """max over parameters of max|update - fp32 sum of the micro-batch gradients| / max|that sum|."""
    model = load_model(BUILTIN_MODEL, dtype=torch.bfloat16)
    engine = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                  config=engine_config)[0]
    parameters = dict(engine.module.named_parameters())
    summed = {}
    for name, parameter in parameters.items():
        parameter.register_hook(lambda grad, name=name: summed.__setitem__(name, summed.get(name, 0) + grad.float()))
    before = {name: safe_get_full_fp32_param(p).clone() for name, p in parameters.items()}
    for number, ids in enumerate(token_batches()):
        engine.set_gradient_accumulation_boundary(number == MICRO_BATCHES - 1)
        engine.backward(next_token_loss(engine, ids), scale_wrt_gas=False)  # as the trainer's optimizer_step
    engine.step()
    return max(float((before[name] - safe_get_full_fp32_param(p) - summed[name]).abs().max() / summed[name].abs().max())
               for name, p in parameters.items())


def main(out_path):
    device = start_distributed()[2]
    errors, configs = {}, {}
    for stage in (1, 2, 3):
        config = TrainConfig(zero_stage=stage, grad_accum=MICRO_BATCHES, per_device_batch=2, grad_clip=0.0)
        configs[stage] = deepspeed_config(config, True, device, hidden_size(BUILTIN_MODEL))
        errors[f"zero-{stage}"] = accumulation_error(configs[stage])
    without = {key: value for key, value in configs[2].items() if key != "data_types"}
    errors["zero-2, DeepSpeed's default accumulation dtype"] = accumulation_error(without)
    with open(out_path, "w") as out:
        json.dump(errors, out)


if __name__ == "__main__":
    main(sys.argv[1])
