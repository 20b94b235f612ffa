"""Crash safety and resumption: the append log, and the correct stage killed mid-run and restarted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spot_fast.rectify import layout
from spot_fast.rectify.jsonl import AppendLog, InputError, write_jsonl_atomic
from spot_fast.rectify.oracle import replace_final_answer

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def test_append_log_cuts_a_partial_last_line_and_resumes(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "correction": "hal')
    with AppendLog(path) as log:
        assert sorted(log.records) == ["a", "b"] and "c" not in log
        log.append({"id": "c", "correction": "whole"})
        with pytest.raises(ValueError, match="already written"):
            log.append({"id": "a"})
    lines = path.read_text().splitlines(keepends=True)
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]
    assert all(line.endswith("\n") for line in lines)


def test_append_log_reports_a_corrupt_complete_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(InputError, match=r"log.jsonl:2: invalid JSON"):
        AppendLog(path)


def test_append_log_refuses_a_second_writer(tmp_path):
    with AppendLog(tmp_path / "log.jsonl"):
        with pytest.raises(RuntimeError, match="another process"):
            AppendLog(tmp_path / "log.jsonl")


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}


def correct_command(workdir):
    return [sys.executable, "-m", "spot_fast.rectify", "correct", "--workdir", str(workdir),
            "--oracle-callable", "rectify_oracles:slow_fix", "--concurrency", "4"]


def complete_lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_correct_stopped_mid_run_resumes_without_loss_or_duplicates(tmp_path, stop):
    errors = [{"id": f"e{i}", "question": f"q{i}", "answer": str(i), "response": f"so \\boxed{{{i + 1}}}"}
              for i in range(60)]
    write_jsonl_atomic(tmp_path / layout.ERRORS, errors)
    output = tmp_path / layout.CORRECTIONS

    # SIGINT as from a terminal, even where this test runs in a background job (which ignores SIGINT,
    # and a child inherits that: Python would then never raise KeyboardInterrupt)
    process = subprocess.Popen(correct_command(tmp_path), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while complete_lines(output) < 8:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=10)
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "interrupted" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert 8 <= complete_lines(output) < len(errors)

    finished = subprocess.run(correct_command(tmp_path), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert output.read_bytes().endswith(b"\n")
    assert sorted(r["id"] for r in records) == sorted(e["id"] for e in errors)
    by_id = {e["id"]: e for e in errors}
    for record in records:
        error = by_id[record["id"]]
        expected = replace_final_answer(error["question"], error["response"], error["answer"])
        assert record["correction"] == expected
