"""Runs ``spot_fast/train.py`` with a checkpoint save interrupted on purpose (for test_checkpoint.py).

    python tests/helpers/interrupt_save.py NAME POINT HOW [train.py options]

While checkpoint ``NAME`` is being written, at ``POINT`` (``save_pretrained``: the engine state is
written, the model not yet; ``fsync``: every file is written, nothing renamed yet), the process
either raises (``HOW=raise``) or is killed with SIGKILL (``HOW=kill``).
"""
import os
import signal
import sys

import transformers

import spot_fast.crash_safe as crash_safe
from spot_fast.train import main


def interrupt(how):
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("save interrupted on purpose")


def install(name, point, how):
    names = (name, f".tmp-{name}")  # the directory being written, wherever the save writes it
    if point == "fsync":
        original = crash_safe.fsync_tree

        def fsync_tree(path):
            if os.path.basename(path) in names:
                interrupt(how)
            original(path)
        crash_safe.fsync_tree = fsync_tree
    elif point == "save_pretrained":
        original = transformers.PreTrainedModel.save_pretrained

        def save_pretrained(self, directory, *args, **kwargs):
            if os.path.basename(os.fspath(directory)) in names:
                interrupt(how)
            return original(self, directory, *args, **kwargs)
        transformers.PreTrainedModel.save_pretrained = save_pretrained
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    name, point, how, *argv = sys.argv[1:]
    install(name, point, how)
    sys.exit(main(argv))
