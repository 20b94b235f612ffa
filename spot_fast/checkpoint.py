"""Checkpoints and the training state a resume needs.

A checkpoint directory holds a Hugging Face model (safetensors + config + tokenizer) that
``AutoModelForCausalLM.from_pretrained`` loads (under ZeRO-3, the weights gathered from every rank's
shards, in the training dtype), the engine's state under ``deepspeed/`` (weights,
optimizer, LR scheduler) with the ``TrainingState`` inside it, and ``trainer_state.json``, a readable
copy of the training state (without RNG) and of the run's configuration. Step checkpoints
(``checkpoint-<step>``) always hold the engine's state; a finished run's ``final`` holds it only when
asked (``--save-optimizer-in-final``): the optimizer state is about 12 bytes per trained parameter
(~100 GB at 8B), and ``final`` is meant as a model directory. A directory without it cannot be resumed
from.

Atomic: every rank writes into ``.tmp-NAME``, and rank 0 installs it as ``NAME`` when it is complete
(``crash_safe.install_dir``: fsynced, renamed, the folder fsynced), so a crash leaves either the
previous checkpoint or the new one, never a partial one under a name that ``checkpoints`` lists. Pruning renames a checkpoint to ``.deleting-NAME`` before deleting
it, for the same reason.
"""
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .crash_safe import install_dir, remove_dir
from .engine import barrier
from .lora import adapters_gathered, has_adapters

STATE_FILE = "trainer_state.json"
ENGINE_STATE = "deepspeed"  # the engine's state inside a checkpoint directory
FINAL = "final"  # a finished run's checkpoint


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingState:
    """What must survive a resume besides the engine's state: the optimizer steps taken, the data
    position they imply (epoch and step within it, checked against this run's example order on
    load), the reward shift (spot_bco's delta) and the RNG states. ``evaluation`` is the last held-out
    evaluation (``{"step": ..., "eval/...": ...}``, or None), recorded so that a checkpoint can be
    chosen by it (``trainer_state.json``)."""

    def __init__(self, order, reward_shift):
        self.order, self.reward_shift, self.step, self.evaluation = order, reward_shift, 0, None

    def data_position(self, step):
        epoch, step_in_epoch = divmod(step, self.order.steps_per_epoch)
        return {"epoch": epoch, "step_in_epoch": step_in_epoch}

    def state_dict(self):
        return {"step": self.step, "data_position": self.data_position(self.step),
                "reward_shift": self.reward_shift.state_dict(), "rng": rng_state(), "evaluation": self.evaluation}

    def load_state_dict(self, state):
        if state["data_position"] != self.data_position(state["step"]):
            raise ValueError(f"the checkpoint stopped at {state['data_position']} (step {state['step']}) but this run's "
                             f"example order puts step {state['step']} at {self.data_position(state['step'])}: "
                             f"the data or the batch settings changed")
        self.step = state["step"]
        self.reward_shift.load_state_dict(state["reward_shift"])
        self.evaluation = state.get("evaluation")
        set_rng_state(state["rng"])


def model_weights(engine):
    """The Hugging Face model's state dict for ``save_pretrained``: None (its own) unless ZeRO-3
    partitions it; then the full weights gathered from every rank (every rank must call this; rank 0
    receives them), with the ``LogprobModel`` wrapper's ``model.`` prefix removed. None as well with
    LoRA adapters: ``save_pretrained`` writes the adapters alone, gathered by ``adapters_gathered``
    (transformers ignores a given state dict for a 4-bit model)."""
    if engine.zero_optimization_stage() != 3 or has_adapters(engine.module.model):
        return None
    weights = engine._zero3_consolidated_16bit_state_dict()
    if weights is None:  # ranks other than 0
        return None
    return {name.removeprefix("model."): value for name, value in weights.items()}


def save_checkpoint(engine, tokenizer, output_dir, name, state, config, rank, engine_state=True):
    """Writes OUTPUT_DIR/NAME atomically; every rank must call it. Returns its path. Without
    ``engine_state`` NAME holds the model, tokenizer and readable training state only."""
    output_dir = Path(output_dir)
    final, tmp = output_dir / name, output_dir / f".tmp-{name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    state_dict = state.state_dict()
    if engine_state:
        engine.save_checkpoint(str(tmp / ENGINE_STATE), tag="state", client_state={"training_state": state_dict})
    weights = model_weights(engine)
    with adapters_gathered(engine.module.model):
        if rank == 0:
            engine.module.model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
    if rank == 0:
        tokenizer.save_pretrained(tmp)
        readable = {key: value for key, value in state_dict.items() if key != "rng"}
        world = dist.get_world_size() if dist.is_initialized() else 1
        (tmp / STATE_FILE).write_text(json.dumps({**readable, "world_size": world, "config": vars(config)}, indent=2))
        install_dir(tmp, final)
    barrier()
    return final


def load_checkpoint(engine, path, state):
    """Restores the engine (weights, optimizer, scheduler) and ``state`` from checkpoint ``path``."""
    _, client_state = engine.load_checkpoint(str(path / ENGINE_STATE), tag="state")
    state.load_state_dict(client_state["training_state"])


def checkpoints(output_dir):
    """Complete step checkpoints in OUTPUT_DIR, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def has_engine_state(path):
    return (Path(path) / ENGINE_STATE).is_dir()


def saved_step(path):
    """The optimizer steps taken when checkpoint ``path`` was written."""
    return json.loads((Path(path) / STATE_FILE).read_text())["step"]


def latest_state(output_dir):
    """The saved state in OUTPUT_DIR with the most steps (None if there is none): a step checkpoint,
    or ``final`` where the run finished; at equal steps the step checkpoint, which always holds the
    engine's state."""
    found = [(int(path.name.split("-")[-1]), 1, path) for path in checkpoints(output_dir)]
    final = Path(output_dir) / FINAL
    if (final / STATE_FILE).is_file():
        found.append((saved_step(final), 0, final))
    return max(found)[2] if found else None


def prune_checkpoints(output_dir, keep_last):
    """Deletes all but the newest ``keep_last`` step checkpoints (0 keeps them all), and any
    deletion a crash interrupted."""
    for path in Path(output_dir).glob(".deleting-checkpoint-*"):
        shutil.rmtree(path)
    for path in checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        remove_dir(path)
