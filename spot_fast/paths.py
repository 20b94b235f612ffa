"""Paths given to a command, checked before any work, so that a directory given for a file, or a file
for a directory, is answered in one line that says so (not "no such file", ``[Errno 17]`` or
``[Errno 20]`` from deep inside a stage).

``file_problem`` and ``directory_problem`` say what is wrong with a path, or None; each command raises
its own error with the option and path in front (``check_output_dir`` for the commands whose errors
are ValueErrors).
"""
import os
import tempfile
from pathlib import Path


class PathError(ValueError):
    """A path that cannot serve as what its option names; the message names the option and the path."""


def file_problem(path):
    """Why ``path`` cannot be read as a file ("is a directory, not a file", "no such file"), or None."""
    path = Path(path)
    if path.is_dir():
        return "is a directory, not a file"
    if not path.is_file():
        return "no such file"
    return None


def directory_problem(path):
    """Why ``path`` cannot be an output directory (it is created when missing), or None. Tried, not
    assumed, in the nearest path that exists: that must be a directory in which a directory can be
    made (a temporary one, removed at once: nothing is left behind)."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as error:
        return f"{existing}: {error.strerror or error}"
    return None


def check_output_dir(option, path):
    """PathError unless ``path`` can be the output directory named by ``option``."""
    problem = directory_problem(path)
    if problem:
        raise PathError(f"{option} {path}: {problem}")
