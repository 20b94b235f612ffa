"""Checkpoints: a Hugging Face model directory (safetensors + config + tokenizer) that
``AutoModelForCausalLM.from_pretrained`` loads, plus the full training state under ``deepspeed/``
(optimizer, scheduler) and ``trainer_state.json`` (step, reward shift, RNG states).

Atomic: everything is written into ``.tmp-NAME`` and renamed to ``NAME`` only when complete, so a
crash leaves either the previous checkpoint or the new one, never a partial one.
"""
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .engine import barrier

STATE_FILE = "trainer_state.json"


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


def _fsync_tree(path):
    for file in Path(path).rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(engine, tokenizer, output_dir, name, trainer_state, rank):
    """Writes OUTPUT_DIR/NAME atomically; every rank must call it. Returns its path."""
    output_dir = Path(output_dir)
    final, tmp = output_dir / name, output_dir / f".tmp-{name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", client_state={"rng": rng_state()})
    state_dict = engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_stage() == 3 else None
    if rank == 0:
        engine.module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        _fsync_tree(tmp)
        if final.exists():
            old = output_dir / f".old-{name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    barrier()
    return final


def load_checkpoint(engine, path):
    """Restores the engine (weights, optimizer, scheduler) and RNG; returns the trainer state."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint (no {STATE_FILE})")
    _, client_state = engine.load_checkpoint(str(path / "deepspeed"), tag="state")
    set_rng_state(client_state["rng"])
    return json.loads((path / STATE_FILE).read_text())


def checkpoints(output_dir):
    """Step checkpoints in OUTPUT_DIR, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def prune_checkpoints(output_dir, keep_last):
    for path in checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path)
