"""Where ``--data`` (and ``--eval-data``, ``--retain-data``) rows come from: what ``datasets.load_dataset``
accepts, plus the project's own JSONL reader.

``rows(source, split, config)`` yields ``(where, index, record)``: ``where`` names the file or dataset
and the row for error messages, ``index`` is the line number (JSONL, from 1) or the row index (from 0),
``record`` a dict. What ``source`` is (``kind``):

- ``jsonl``: a ``.jsonl`` file (or any file of another suffix), read line by line by this module:
  errors name ``file:line`` (invalid JSON, bytes that are not UTF-8); a UTF-8 byte-order mark is skipped.
- ``file``: a ``.parquet``, ``.arrow`` or ``.json`` file: ``load_dataset(<builder>, data_files=...)``.
- ``saved``: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``:
  ``load_from_disk``, and ``split`` from a ``DatasetDict``.
- ``folder``: another folder (of data files): ``load_dataset(folder, name=config, split=split)``.
- ``hub``: an ``owner/name`` that is no local path (the rule of ``models.is_hub_id``):
  ``load_dataset(id, name=config, split=split)``, from the local cache under ``HF_HUB_OFFLINE=1``.

Rows of a dataset may carry ``None`` where the table's schema has a column (or a message key) the row
lacks (a union of the rows' fields); such keys are dropped, so a row reads as the JSON line it was
made from. ``datasets`` is imported only for the kinds that need it.
"""
import json
from pathlib import Path

from .models import is_hub_id

JSONL_SUFFIXES = (".jsonl",)
DATASET_FILES = {".parquet": "parquet", ".arrow": "arrow", ".json": "json"}
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv")  # what a folder of data files may hold


class DataError(ValueError):
    """Bad training data; the message names the file or dataset, and the line or row."""


def kind(source):
    """``jsonl``, ``file``, ``saved``, ``folder`` or ``hub`` (module docstring); DataError for a path that
    does not exist and is no hub id."""
    path = Path(source)
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "saved"
        if not any(p.suffix.lower() in DATA_FILE_SUFFIXES for p in path.rglob("*") if p.is_file()):
            raise DataError(f"{source}: is a directory with no dataset in it (neither a save_to_disk folder nor "
                            f"data files: {', '.join(DATA_FILE_SUFFIXES)})")
        return "folder"
    if path.is_file():
        return "file" if path.suffix.lower() in DATASET_FILES else "jsonl"
    if path.suffix.lower() not in (*JSONL_SUFFIXES, *DATASET_FILES) and is_hub_id(str(source)):
        return "hub"
    raise DataError(f"{source}: no such file or folder (nor a hub dataset id 'owner/name')")


def describe(source, split="train", config=""):
    """How messages name ``source``: the path, or for a dataset with splits ``name[split]`` (and its
    configuration)."""
    if kind(source) in ("hub", "folder") or (kind(source) == "saved" and (Path(source) / "dataset_dict.json").is_file()):
        return f"{source}{f' ({config})' if config else ''}[{split}]"
    return str(source)


def without_nulls(value):
    """``value`` with every dict key whose value is None dropped, at any depth (a table's union schema
    gives a row None for the fields it lacks)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def jsonl_rows(path):
    """``(where, line number, record)`` of each non-blank line of a JSONL file."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                                  f"re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: invalid JSON: {error.msg} at column {error.colno}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, line_number, record


def load_table(source, split="train", config=""):
    """The ``datasets.Dataset`` that ``source`` names (every kind but ``jsonl``)."""
    import datasets

    source_kind = kind(source)
    name = describe(source, split, config)
    try:
        if source_kind == "file":
            builder = DATASET_FILES[Path(source).suffix.lower()]
            return datasets.load_dataset(builder, data_files=str(source), split="train")
        if source_kind == "saved":
            table = datasets.load_from_disk(str(source))
            if isinstance(table, datasets.DatasetDict):
                if split not in table:
                    raise DataError(f"{source}: no split {split!r} (it has {', '.join(map(repr, table))}); "
                                      f"choose one with --data-split / --eval-data-split")
                table = table[split]
            return table
        return datasets.load_dataset(str(source), name=config or None, split=split)
    except DataError:
        raise
    except Exception as error:  # datasets raises many kinds (missing split, config, file, no network)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(f"{name}: cannot be loaded as a dataset ({type(error).__name__}: {message})") from None


def rows(source, split="train", config=""):
    """``(where, index, record)`` for each row of ``source`` (module docstring), in order."""
    if kind(source) == "jsonl":
        yield from jsonl_rows(source)
        return
    table = load_table(source, split, config)
    name = describe(source, split, config)
    for index, record in enumerate(table):
        yield f"{name} row {index}", index, without_nulls(record)

