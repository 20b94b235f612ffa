"""The settings a log of samples was drawn with, recorded beside it, so that one log never mixes them.

``claim(settings_path, settings, log_path)`` is called before sampling into ``log_path`` (an
``AppendLog``). The log is claimed by its first sample, not by the settings file: while the log holds
no complete sample (absent, empty, or only a line cut short by a crash), the settings are (re)written,
so a run that failed before its first sample (a missing backend, a model that does not load) leaves
nothing that refuses the corrected rerun. Once the log holds samples, a run whose settings differ is
refused, naming every differing setting as recorded and as given now; a log with samples but no
recorded settings is refused too, since nothing says what drew them.
"""
import json
from pathlib import Path

from spot_fast.crash_safe import write_file


def holds_samples(log_path):
    """Whether ``log_path`` holds at least one complete, non-blank line."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return False
    complete = log_path.read_bytes().split(b"\n")[:-1]  # the part after the last newline is incomplete
    return any(line.strip() for line in complete)


def claim(settings_path, settings, log_path, directory_option):
    """Record ``settings`` (a JSON-able dict) at ``settings_path``, or raise ValueError when the samples
    already in ``log_path`` were drawn with other settings (see the module docstring); the error
    suggests another ``directory_option`` (the command's option naming the output directory)."""
    settings_path, log_path = Path(settings_path), Path(log_path)
    if not holds_samples(log_path):
        write_file(settings_path, json.dumps(settings, indent=2) + "\n")
        return
    if not settings_path.is_file():
        raise ValueError(f"{log_path} holds samples but {settings_path} does not record what drew them; "
                         f"use another {directory_option}")
    recorded = json.loads(settings_path.read_text())
    changed = sorted(key for key in recorded.keys() | settings.keys() if recorded.get(key) != settings.get(key))
    if changed:
        differences = ", ".join(f"{key}: {recorded.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
        raise ValueError(f"{log_path} holds samples drawn with other settings ({differences}); "
                         f"use another {directory_option}, or the same settings to resume")
