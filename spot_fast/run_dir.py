"""The output directory of a run, checked before anything long starts.

A fresh run refuses a directory that holds another run's results (``metrics.jsonl``, ``final/``,
checkpoints, the plot), so that two runs never mix their metrics or overwrite each other's model;
``--overwrite`` deletes those results first; the refusal suggests ``--resume latest`` only where
there is a checkpoint to resume. A resume (``--resume latest`` or a checkpoint path)
continues in place, and only if the settings that decide what the run computes are the
checkpoint's (``config.changed_on_resume``) and the world size is the same. ``latest`` is the saved
state with the most steps, ``final/`` included: a finished run is resumed from its end, where there
is nothing left to train (``finished``) unless a larger ``--max-steps`` asks for more, which needs
the optimizer state in ``final/``. The directory must be writable, which is tried, not assumed.
"""
import json
import shutil
from pathlib import Path

from .checkpoint import FINAL, STATE_FILE, checkpoints, has_engine_state, latest_state, saved_step
from .config import RESUME_SAFE, ConfigError, changed_on_resume
from .paths import directory_problem

RESULT_NAMES = ("metrics.jsonl", "training.png", "tensorboard", "wandb", "final", "final-merged")


def previous_results(output_dir):
    """The paths in ``output_dir`` that belong to a run's results."""
    output_dir = Path(output_dir)
    named = [output_dir / name for name in RESULT_NAMES if (output_dir / name).exists()]
    return named + checkpoints(output_dir)


def check_writable(output_dir):
    """Raises ConfigError unless ``output_dir`` can be created and written (``paths.directory_problem``,
    the check of every command's output directory)."""
    problem = directory_problem(output_dir)
    if problem:
        raise ConfigError(f"--output-dir {output_dir} is not writable: {problem}")


def resume_checkpoint(config, world):
    """The checkpoint directory to resume from (None for a fresh run), after checking that it exists
    and that this run's settings match it."""
    if not config.resume:
        return None
    output_dir = Path(config.output_dir)
    if config.resume == "latest":
        path = latest_state(output_dir)
        if path is None:
            raise ConfigError(f"--resume latest: no checkpoint in {output_dir}")
    else:
        path = Path(config.resume)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ConfigError(f"--resume {config.resume}: {path} is not a checkpoint (no {STATE_FILE})")
    saved = json.loads(state_file.read_text())
    differences = changed_on_resume(saved["config"], config)
    if saved.get("world_size", world) != world:
        differences.append(("world size (processes)", saved["world_size"], world))
    if differences:
        listed = "; ".join(f"{name}: {before!r} in the checkpoint, {now!r} now" for name, before, now in differences)
        raise ConfigError(f"--resume {config.resume}: {path} was trained with other settings ({listed}). A resume "
                          f"may change only {', '.join(RESUME_SAFE)}; start a new run in a new --output-dir instead")
    return path


def finished(checkpoint, total_steps):
    """True where ``checkpoint`` is a finished run's ``final/`` with none of this run's ``total_steps``
    left to train: the run is done, and ``final/`` is kept as it is. Otherwise training goes on from
    ``checkpoint``, which needs its engine state: ConfigError for a ``final/`` saved without it."""
    step = saved_step(checkpoint)
    if checkpoint.name == FINAL and step >= total_steps:
        return True
    if not has_engine_state(checkpoint):
        raise ConfigError(f"--resume: {checkpoint} holds the model at step {step} but no optimizer state (saved "
                          f"without --save-optimizer-in-final), so this run of {total_steps} steps cannot go on "
                          f"from it: resume from a checkpoint-<step>, or start a new run with --model {checkpoint}")
    return False


def prepare(config, world):
    """Checks ``config.output_dir`` (and the checkpoint to resume from); returns that checkpoint or
    None. Rank 0 deletes a previous run's results when ``--overwrite`` asks for it."""
    output_dir = Path(config.output_dir)
    checkpoint = resume_checkpoint(config, world)
    if checkpoint is None:
        found = previous_results(output_dir)
        if found and not config.overwrite:
            resume = ", continue that run with --resume latest" if checkpoints(output_dir) else ""
            raise ConfigError(f"--output-dir {output_dir} holds another run's results "
                              f"({', '.join(p.name for p in found)}): choose a new --output-dir{resume}, "
                              f"or pass --overwrite to delete them")
    check_writable(output_dir)
    return checkpoint


def delete_previous_results(output_dir):
    for path in previous_results(output_dir):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
