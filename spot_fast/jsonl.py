"""JSONL input and output for the rectification stages and the evaluation.

Reading: ``read_jsonl`` yields one ``Line`` per non-blank line (a UTF-8 byte-order mark at the start of
the file, as some editors write, is skipped); anything malformed raises
``InputError`` naming the file, the line number and the field, so bad input never silently becomes
an empty example.

Writing, two kinds:
- ``AppendLog``: the output of a long stage (elicit, correct), keyed by record id and resumable.
  Invariants: each record is one complete line written by a single ``os.write`` and made durable by
  ``fsync`` before ``append`` returns; ids are unique; on open, a trailing partial line (a crash in the
  middle of a write) is cut off, every other line is parsed, and the ids already present are known, so
  a rerun skips them. An exclusive ``flock`` keeps a second process from appending to the same file.
- ``write_jsonl_atomic``: whole-file outputs of short stages, through ``crash_safe.write_file``
  (a temporary file fsynced and renamed over the target): readers see the old file or the new one,
  never a mix.

Every file is created with mode ``NEW_FILE_MODE`` less the process umask, as ``open(path, "w")``
creates ordinary files (``tempfile.mkstemp`` would make them 0o600, private to their owner).
"""
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from spot_fast.crash_safe import NEW_FILE_MODE, write_file
from spot_fast.paths import file_problem

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Malformed input, located at ``path:line``."""

    def __init__(self, path, line, message):
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Line:
    """One JSON object read from ``path`` at 1-based line ``number``."""

    path: Path
    number: int
    record: dict

    def error(self, message):
        return InputError(self.path, self.number, message)

    def text(self, *names, numbers=False, empty=False):
        """The value of the first of ``names`` present, as a string.

        ``numbers``: also accept a JSON number (converted with ``str``). ``empty``: accept "".
        """
        name = next((n for n in names if n in self.record), None)
        if name is None:
            raise self.error(f"missing field {' or '.join(repr(n) for n in names)}")
        value = self.record[name]
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(f"field {name!r} must be a string, got {type(value).__name__}")
        if not empty and not value.strip():
            raise self.error(f"field {name!r} is empty")
        return value

    def optional_text(self, name):
        """The string in field ``name``, or None when the field is absent or null."""
        value = self.record.get(name)
        if value is not None and not isinstance(value, str):
            raise self.error(f"field {name!r} must be a string or null, got {type(value).__name__}")
        return value

    def record_id(self, default=None):
        """The ``id`` field as a string (strings and integers accepted); ``default`` when absent or null."""
        value = self.record.get("id")
        if value is None:
            if default is None:
                raise self.error("missing field 'id'")
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(f"field 'id' must be a string or an integer, got {type(value).__name__}")
        return str(value)


def read_jsonl(path):
    """Yield a ``Line`` for every non-blank line of ``path``; raise ``InputError`` on bad JSON."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise InputError(path, 0, problem)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, number, f"not UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(path, number, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise InputError(path, number, f"expected a JSON object, got {type(record).__name__}")
            yield Line(path, number, record)


def read_unique(path, parse):
    """``[parse(line) for line in read_jsonl(path)]``, each result a dict whose ``id`` is unique."""
    records, seen = [], {}
    for line in read_jsonl(path):
        record = parse(line)
        if record["id"] in seen:
            raise line.error(f"duplicate id {record['id']!r} (first on line {seen[record['id']]})")
        seen[record["id"]] = line.number
        records.append(record)
    return records


def _encode(record):
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class AppendLog:
    """An append-only JSONL file of records with unique ``id`` fields (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, NEW_FILE_MODE)
        try:
            self._lock()
            self._cut_partial_line()
            self.records = {}
            for line in read_jsonl(self.path):
                record_id = line.record_id()
                if record_id in self.records:
                    raise line.error(f"duplicate id {record_id!r}")
                self.records[record_id] = line.record
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self):
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{self.path} is being written by another process") from None

    def _cut_partial_line(self):
        with open(self.path, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            os.truncate(self.path, keep)
            log.warning("%s: removed an incomplete last line (%d bytes) left by an interrupted run",
                        self.path, len(data) - keep)

    def __contains__(self, record_id):
        return record_id in self.records

    def append(self, record):
        """Write ``record`` as one line and fsync; it survives any crash after this returns."""
        if record["id"] in self.records:
            raise ValueError(f"{self.path}: id {record['id']!r} is already written")
        data = memoryview(_encode(record))
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)
        self.records[record["id"]] = record

    def close(self):
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_jsonl_atomic(path, records):
    write_file(path, b"".join(_encode(r) for r in records))
