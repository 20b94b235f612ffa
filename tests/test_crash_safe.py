"""``spot_fast/crash_safe.py``: an output is replaced only by complete, durable content. What is
checked is the order of the operations a crash could cut between: every file written is fsynced
before the rename that publishes it, and the folder holding it is fsynced after that rename (so the
rename survives a power loss); a failure inside the block leaves the old content and no temporary."""
import os
from pathlib import Path

import pytest

from spot_fast import crash_safe


@pytest.fixture
def events(monkeypatch):
    """The fsyncs (by the path of the synced file or folder) and renames crash_safe makes, in order."""
    recorded = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        recorded.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        recorded.append(("replace", str(Path(source).resolve()), str(Path(target).resolve())))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return recorded


def publishing(events, target):
    """The index of the rename that put ``target`` in place, and its source."""
    [(index, source)] = [(i, e[1]) for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target)]
    return index, source


def test_a_file_is_fsynced_before_its_rename_and_its_folder_after(tmp_path, events):
    target = (tmp_path / "out" / "result.json").resolve()
    crash_safe.write_file(target, "old")
    events.clear()
    crash_safe.write_file(target, '{"new": 1}')
    assert target.read_text() == '{"new": 1}'
    index, source = publishing(events, target)
    assert ("fsync", source) in events[:index], f"the new content was renamed in before it was fsynced: {events}"
    assert ("fsync", str(target.parent)) in events[index + 1:], f"the folder was not fsynced after the rename: {events}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"], "a temporary file was left"
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask(), "not created as open() creates files"


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failure_while_writing_leaves_the_old_content(tmp_path):
    target = tmp_path / "cache.pt"
    crash_safe.write_file(target, b"complete")
    with pytest.raises(RuntimeError, match="interrupted"):
        with crash_safe.replaced_file(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.pt"], "a temporary file was left"


def test_a_folder_is_fsynced_whole_before_it_replaces_the_old_one(tmp_path, events):
    target = (tmp_path / "merged").resolve()
    with crash_safe.replaced_dir(target) as tmp:
        (tmp / "old.txt").write_text("old")
    events.clear()
    with crash_safe.replaced_dir(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"w")
        (tmp / "config.json").write_text("{}")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["config.json", "sub", "sub/weights.bin"]
    index, source = publishing(events, target)
    synced = [e[1] for e in events[:index] if e[0] == "fsync"]
    for name in ("config.json", "sub/weights.bin", "sub", ""):
        assert str(Path(source, name)).rstrip("/") in synced, f"{name or 'the folder'} not fsynced before the rename: {events}"
    assert ("fsync", str(tmp_path.resolve())) in events[index + 1:], f"the parent was not fsynced after the rename: {events}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"], "the old folder or a temporary was left"


def test_a_failure_while_writing_a_folder_leaves_the_old_one(tmp_path):
    target = tmp_path / "final"
    with crash_safe.replaced_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"complete")
    with pytest.raises(RuntimeError):
        with crash_safe.replaced_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"ha")
            raise RuntimeError("interrupted")
    assert (target / "model.safetensors").read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_a_removed_folder_is_never_partial_under_its_name(tmp_path, events):
    target = (tmp_path / "checkpoint-3").resolve()
    (target / "deep").mkdir(parents=True)
    (target / "deep" / "file").write_text("x")
    crash_safe.remove_dir(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert events == [("replace", str(target), str(tmp_path.resolve() / ".deleting-checkpoint-3"))], \
        "the folder was not renamed aside before its deletion"
