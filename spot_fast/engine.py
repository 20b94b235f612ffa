"""Process group, DeepSpeed engine, optimizer and schedule.

One process per device under torchrun (or a single process without it). CUDA uses NCCL, the CPU
gloo. ``stop_distributed`` ends every run with a barrier and ``destroy_process_group``; without it
DeepSpeed processes abort at exit now and then.

On the CPU, DeepSpeed's process group needs its shared-memory communication op, a C++ extension
that torch builds on first use (a minute or more) under ``TORCH_EXTENSIONS_DIR``, by default one
directory per user (``~/.cache/torch_extensions``) that every environment shares, so environments
with other torch builds rebuild it over each other. Where that variable is unset and Python runs in
a writable virtual environment, the build is kept in that environment (``VENV/torch_extensions``);
a run says when it builds the op, once.
"""
import math
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .noise import quiet_op_load


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extensions_dir():
    """Where torch builds and finds C++ extensions: ``TORCH_EXTENSIONS_DIR``, set to
    ``sys.prefix/torch_extensions`` first when unset and ``sys.prefix`` is a writable virtual
    environment; None for torch's per-user default."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ and sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")
    return os.environ.get("TORCH_EXTENSIONS_DIR")


def announce_communication_op_build(directory):
    """Says, on rank 0, that DeepSpeed is about to build its CPU communication op (not built in
    ``directory`` yet)."""
    if directory is None or os.environ.get("RANK", "0") != "0":
        return
    if not any(Path(directory, "deepspeed_shm_comm").glob("*.so")):
        print(f"DeepSpeed: building its CPU communication op once for this environment (a minute or more), in "
              f"{directory}", flush=True)


def start_distributed():
    """Initializes the process group (a group of one without torchrun); returns (rank, world, device)."""
    directory = extensions_dir()
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        announce_communication_op_build(directory)
    with quiet_op_load():  # DeepSpeed loads (and once builds) its CPU communication op here
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def stop_distributed(succeeded=True):
    """Barrier and destroy. After a failure there is no barrier: the other ranks may be anywhere (a
    barrier would wait for them forever), and torchrun stops them when this process exits."""
    if dist.is_initialized():
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def warmup_steps(total_steps, warmup_ratio):
    """``ceil(warmup_ratio * total_steps)``, as transformers' ``TrainingArguments.get_warmup_steps``."""
    return math.ceil(warmup_ratio * total_steps)


def cosine_schedule(optimizer, total_steps, warmup_ratio):
    """transformers' ``get_cosine_schedule_with_warmup``, step for step (the SPoT recipe ran on it):
    the factor of step ``s`` is ``s / warmup`` during the warmup (step 0 trains at rate 0), then
    ``0.5 * (1 + cos(pi * progress))`` with ``progress = (s - warmup) / (total - warmup)``."""
    warmup = warmup_steps(total_steps, warmup_ratio)

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(model, config, learning_rate):
    """AdamW with weight decay on matrices only (not on biases and norm weights). A parameter that
    ZeRO-3 partitioned at construction is a flat shard: its shape is ``ds_shape``."""
    def is_matrix(p):
        return len(getattr(p, "ds_shape", p.shape)) >= 2

    decay = [p for p in model.parameters() if p.requires_grad and is_matrix(p)]
    no_decay = [p for p in model.parameters() if p.requires_grad and not is_matrix(p)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]  # DeepSpeed drops empty ones (LoRA has no vectors)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=1e-8,
                             fused=next(model.parameters()).is_cuda and config.offload == "none")


def deepspeed_config(config, bf16, device, hidden_size):
    """The engine's configuration. ``--offload optimizer`` keeps the fp32 master weights, Adam moments
    and gradient partitions in CPU memory and steps there; ``params`` also the 16-bit weights (ZeRO-3),
    fetched to the device layer by layer. The client AdamW steps on the CPU shards (DeepSpeed's own
    CPU Adam would need its C++ extension built). Under ZeRO-3 a parameter of fewer than
    ``10 * hidden_size`` elements (norm weights, biases) stays whole on every rank, as transformers'
    DeepSpeed integration sets it; every weight matrix is partitioned and gathered where it is used
    (DeepSpeed's fixed default, 1e5 elements, would keep a small model whole after its first forward).

    Gradients of the ``grad_accum`` micro-batches are summed in fp32 (``data_types.grad_accum_dtype``;
    DeepSpeed's default is the model's dtype, so bf16 would round the running sum after every
    micro-batch). DeepSpeed 0.19.8 honours it from ZeRO-1 on: ZeRO-2 and 3 keep fp32 gradient
    partitions; ZeRO-1 in bf16 switches to its BF16 optimizer, which holds a whole fp32 gradient
    buffer and all-reduces it in the communication dtype, so that dtype is fp32 too (else the sum is
    rounded to bf16 once, at the step). ZeRO-0 refuses a grad_accum_dtype other than the model's
    (NotImplementedError): there bf16 gradients accumulate in bf16 (``grad_accum_note``)."""
    offload = {"device": "cpu", "pin_memory": device.type == "cuda"}
    zero = {
        "stage": config.zero_stage,
        "overlap_comm": device.type == "cuda",
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": True,
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    if config.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = offload
    if config.offload == "params":
        zero["offload_param"] = offload
    engine_config = {
        "train_micro_batch_size_per_gpu": config.per_device_batch,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": config.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if config.zero_stage >= 1:
        engine_config["data_types"] = {"grad_accum_dtype": "fp32"}
    if config.zero_stage == 1 and bf16:
        engine_config["communication_data_type"] = "fp32"
    return engine_config


def grad_accum_note(config, bf16):
    """A line for the start of a run whose micro-batch gradients are summed in bf16, else None."""
    if bf16 and config.zero_stage == 0 and config.grad_accum > 1:
        return (f"note: with --zero-stage 0 DeepSpeed sums the gradients of the {config.grad_accum} micro-batches in "
                f"bf16 (ZeRO-1 and up sum them in fp32)")
    return None


def build_engine(model, config, engine_config, learning_rate, total_steps):
    """The DeepSpeed engine around ``model`` (``deepspeed_config``'s ``engine_config``)."""
    import deepspeed

    optimizer = adamw(model, config, learning_rate)
    scheduler = cosine_schedule(optimizer, total_steps, config.warmup_ratio)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=engine_config)
    return engine
