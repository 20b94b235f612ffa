"""Outputs that are whole or absent after a crash: the one way this project replaces a file or a folder.

    write_file(path, data)                         # str or bytes
    with replaced_file(path, "wb") as f: torch.save(obj, f)
    with replaced_dir(path) as tmp: model.save_pretrained(tmp)
    install_dir(tmp, path)                         # a folder several processes wrote into
    remove_dir(path)                               # never half-deleted under its name

Invariant: ``path`` holds its previous complete content (or nothing) until the new content is complete
and durable, and then the new content, whenever the process or the machine stops. Algorithm: write
into a temporary sibling (same folder, so the rename stays on one file system), flush and fsync every
file written, rename it over ``path`` (atomic on POSIX), then fsync the folder that holds ``path``,
so that the rename itself survives a power loss. A temporary left by a failure is removed.

A folder cannot be renamed over a non-empty one, so a folder that replaces another is swapped in two
renames: the old one aside to ``.old-NAME``, the new one in, then the old one removed. Between the
two renames ``path`` is absent and its previous complete content is at ``.old-NAME``.
"""
import contextlib
import os
import secrets
import shutil
from pathlib import Path

NEW_FILE_MODE = 0o666  # as open() creates files: the umask decides


def fsync_dir(path):
    """Makes the entries of folder ``path`` (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path):
    """fsyncs every file below folder ``path``, then every folder, deepest first."""
    path = Path(path)
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
    fsync_dir(path)


def _temporary_sibling(path):
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def replaced_file(path, mode="w", encoding="utf-8"):
    """A file object to write ``path``'s new content into (``mode`` ``"w"`` or ``"wb"``); ``path`` is
    replaced when the block ends without an exception, and left as it was otherwise."""
    if mode not in ("w", "wb"):
        raise ValueError(f"replaced_file: mode {mode!r}; expected 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_file(path, data):
    """Replaces ``path`` with ``data`` (str, written as UTF-8, or bytes)."""
    with replaced_file(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def install_dir(tmp, path):
    """Makes the complete folder ``tmp`` durable and puts it in ``path``'s place (module docstring)."""
    tmp, path = Path(tmp), Path(path)
    fsync_tree(tmp)
    if path.exists():
        old = path.with_name(f".old-{path.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_dir(path):
    """Deletes folder ``path``, first renamed aside to ``.deleting-NAME``, so that a crash during the
    deletion never leaves a partial folder under its name (a leftover ``.deleting-NAME`` is the
    caller's to sweep)."""
    path = Path(path)
    aside = path.with_name(f".deleting-{path.name}")
    os.replace(path, aside)
    shutil.rmtree(aside)


@contextlib.contextmanager
def replaced_dir(path):
    """A fresh temporary folder to write ``path``'s new content into; it replaces ``path`` when the
    block ends without an exception, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        install_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
