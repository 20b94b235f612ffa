"""Checks that need the ranks' own memory, run by test_zero3.py under torchrun (2 processes, gloo):

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/helpers/zero_ranks.py MODEL_DIR OUT_DIR

1. Partitioned construction (ZeRO-3): the trainer's ``load_policy`` on the built-in model and on
   MODEL_DIR (``from_pretrained``) returns a model whose every parameter is, before any forward, an
   empty placeholder plus a local shard of ``ceil(numel / world)`` elements; gathered, MODEL_DIR's
   parameters equal the saved ones.
2. Synchronised training (ZeRO-2, then ZeRO-3): the trainer's own ``set_up`` and one
   ``optimizer_step``; then every parameter (gathered under ZeRO-3) is compared with rank 0's. The
   parameter groups ``set_up`` builds its optimizer with are recorded as they are built.

Each rank writes OUT_DIR/rank-R.json: per parameter name, the local element counts, and per stage
the largest difference from rank 0, the change made by the step and the weight decay.
"""
import json
import math
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from spot_fast import engine as engine_module
from spot_fast.config import parse_config
from spot_fast.engine import deepspeed_config, start_distributed
from spot_fast.metrics import MetricsWindow
from spot_fast.models import BUILTIN_MODEL, hidden_size
from spot_fast.train import load_policy, optimizer_step, set_up


def shards(policy):
    """name -> (elements held locally, elements in the full parameter, elements visible as .data)."""
    return {name: (p.ds_tensor.numel(), p.ds_numel, p.numel()) for name, p in policy.named_parameters()}


def partitioned_construction(model_dir, out_dir):
    config = parse_config(["--zero-stage", "3", "--output-dir", str(out_dir / "unused")])
    engine_config = deepspeed_config(config, False, torch.device("cpu"), hidden_size(BUILTIN_MODEL))
    found = {}
    for name in (BUILTIN_MODEL, str(model_dir)):
        policy = load_policy(name, config, torch.float32, torch.device("cpu"), "sdpa", engine_config)
        found[name] = shards(policy)
    saved = load_file(model_dir / "model.safetensors")
    loaded = dict(policy.model.named_parameters())
    differences = {}
    for name, value in saved.items():
        with deepspeed.zero.GatheredParameters([loaded[name]]):
            differences[name] = float((loaded[name].data - value).abs().max())
    return found, differences


def gathered(engine):
    """name -> full parameter value (a copy), on every rank."""
    parameters = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(parameters.values()), enabled=engine.zero_optimization_stage() == 3):
        return {name: p.data.detach().clone() for name, p in parameters.items()}


def weight_decay_by_name(model, optimizer):
    """name -> [weight decay, elements of the whole parameter] of every parameter ``optimizer`` steps."""
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: [group["weight_decay"], getattr(p, "ds_numel", p.numel())]
            for group in optimizer.param_groups for p in group["params"]}


def one_step_agreement(stage, out_dir):
    """Largest |parameter - rank 0's| and largest change of the step, per parameter name; and the
    weight decay of each parameter in the optimizer the engine was built with."""
    build_adamw, weight_decay = engine_module.adamw, {}

    def recorded_adamw(model, config, learning_rate):
        optimizer = build_adamw(model, config, learning_rate)
        weight_decay.update(weight_decay_by_name(model, optimizer))
        return optimizer

    config = parse_config(["--zero-stage", str(stage), "--per-device-batch", "2", "--grad-accum", "1",
                           "--max-steps", "1", "--warmup-ratio", "0", "--learning-rate", "1e-2", "--output-dir", str(out_dir / f"zero{stage}"),
                           "--cache-dir", str(out_dir / f"cache{stage}")])
    engine_module.adamw = recorded_adamw
    try:
        run = set_up(config)
    finally:
        engine_module.adamw = build_adamw
    before = gathered(run.engine)
    optimizer_step(run, 0, MetricsWindow())
    after = gathered(run.engine)
    result = {}
    for name, value in after.items():
        theirs = value.clone()
        dist.broadcast(theirs, src=0)
        result[name] = (float((value - theirs).abs().max()), float((value - before[name]).abs().max()))
    return result, weight_decay


def main():
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank, world, _ = start_distributed()
    agreement, weight_decay = {}, {}
    agreement[2], weight_decay[2] = one_step_agreement(2, out_dir)  # first: ZeRO-3 loading switches transformers to partitioning
    found, loaded_differences = partitioned_construction(model_dir, out_dir)
    agreement[3], weight_decay[3] = one_step_agreement(3, out_dir)
    report = {"world": world, "shards": found, "loaded_differences": loaded_differences, "agreement": agreement,
              "weight_decay": weight_decay,
              "expected_shard": {name: {p: math.ceil(full / world) for p, (_, full, _) in params.items()}
                                 for name, params in found.items()}}
    (out_dir / f"rank-{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
