"""Crash safety and resumption: the append log, and the correct stage killed mid-run and restarted."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spot_fast.jsonl import AppendLog, InputError, write_jsonl_atomic
from spot_fast.rectify import layout
from spot_fast.rectify.correct import correct, run_bounded
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


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "helpers"), str(REPO)])}


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


@pytest.fixture
def sigint_raises():
    """Ctrl-C raising KeyboardInterrupt, as in a terminal, even where the tests run as a background job."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_slow_write_still_writes_every_reply_received(tmp_path, monkeypatch, sigint_raises):
    """Six replies arrive while the first one's write is slow, then Ctrl-C, then the six calls in flight
    reply too: all twelve are on disk, and no call starts after the interrupt."""
    errors = [{"id": f"e{i}", "question": f"q{i}", "answer": str(i), "response": f"so \\boxed{{{i + 1}}}"}
              for i in range(18)]
    write_jsonl_atomic(tmp_path / layout.ERRORS, errors)
    replied, interrupted, asked, lock = threading.Semaphore(0), threading.Event(), [], threading.Lock()

    def oracle(question, wrong_answer, ground_truth):
        with lock:
            asked.append(question)
            in_flight = len(asked) > 6
        if in_flight:  # replies only after the interrupt
            assert interrupted.wait(timeout=10)
        replied.release()
        return replace_final_answer(question, wrong_answer, ground_truth)

    real_append = AppendLog.append

    def slow_first_append(log, record):
        if log.path.name == layout.CORRECTIONS and log.path.stat().st_size == 0:
            for _ in range(6):
                assert replied.acquire(timeout=10)
            time.sleep(0.2)  # the workers hand over the six replies and start six more calls
            os.kill(os.getpid(), signal.SIGINT)
            interrupted.set()
            for _ in range(6):
                assert replied.acquire(timeout=10)
            time.sleep(0.2)
        real_append(log, record)

    monkeypatch.setattr(AppendLog, "append", slow_first_append)
    with pytest.raises(KeyboardInterrupt):
        correct(tmp_path, oracle, concurrency=6)
    written = [json.loads(line) for line in (tmp_path / layout.CORRECTIONS).read_text().splitlines()]
    assert len(asked) == 12 and sorted(r["id"] for r in written) == sorted(f"e{q[1:]}" for q in asked)


def test_a_second_ctrl_c_stops_at_once_and_the_handler_is_restored(sigint_raises):
    results = run_bounded(lambda i: i, list(range(4)), 2)
    next(results)
    os.kill(os.getpid(), signal.SIGINT)  # deferred: the consumer goes on
    time.sleep(0.1)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    results.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
