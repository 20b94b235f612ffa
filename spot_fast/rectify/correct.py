"""Stage 2, correct: ask an Oracle for a minimal-edit correction of every wrong answer.

Input: ``errors.jsonl`` (records with ``id``, ``question`` or ``prompt``, ``answer`` or
``ground_truth``, ``response`` or ``original_answer``). Output: ``corrections.jsonl``, the input
record plus ``correction`` (the Oracle's text, or null when it offered none).

Invariants, whatever happens to the process (crash, SIGKILL, Ctrl-C):
- every finished correction is on disk before the next one is written (``AppendLog``: one complete
  line, fsync); a rerun skips the ids already written, so ids are never duplicated and finished work
  is never lost or redone;
- only the main thread writes; Oracle calls run on at most ``concurrency`` worker threads;
- an Oracle failure (``OracleError``: a permanent HTTP error, or retries exhausted) writes nothing for
  that id - it is logged and counted, and the next run tries again. Any other exception from an
  Oracle is a bug: it stops the stage, keeping everything written so far.
"""
import logging
import queue
import threading
from pathlib import Path

from tqdm import tqdm

from spot_fast.rectify import layout
from spot_fast.rectify.chat_client import OracleError
from spot_fast.rectify.jsonl import AppendLog, read_unique

log = logging.getLogger(__name__)

FAILURES = "oracle failures (not written; run again to retry)"


def error_fields(line):
    """The record of a wrong answer on ``line``, with the field names the later stages use."""
    return {**line.record, "id": line.record_id(),
            "question": line.text("question", "prompt"),
            "answer": line.text("answer", "ground_truth", numbers=True),
            "response": line.text("response", "original_answer", empty=True)}


def run_bounded(function, items, workers):
    """Yield ``(item, result, exception)`` for each item as ``function(item)`` finishes.

    At most ``workers`` calls run at once: that many daemon threads take items from one queue. When
    the consumer stops early (an exception, Ctrl-C), idle workers start no new call, and calls in
    flight are abandoned: daemon threads do not hold up the exit of the process.
    """
    todo, done, stop = queue.SimpleQueue(), queue.SimpleQueue(), threading.Event()
    for item in items:
        todo.put(item)

    def work():
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((item, function(item), None))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which decides
                done.put((item, None, e))

    for _ in range(min(workers, len(items))):
        threading.Thread(target=work, daemon=True).start()
    try:
        for _ in range(len(items)):
            yield done.get()
    finally:
        stop.set()


def correct(workdir, oracle, concurrency=8):
    """Correct every error not yet in ``corrections.jsonl``; returns the stage summary."""
    workdir = Path(workdir)
    errors = read_unique(workdir / layout.ERRORS, error_fields)
    failures = 0

    def ask(error):
        return oracle(question=error["question"], wrong_answer=error["response"],
                      ground_truth=error["answer"])

    with AppendLog(workdir / layout.CORRECTIONS) as corrections:
        todo = [error for error in errors if error["id"] not in corrections]
        with tqdm(total=len(todo), desc="correct", unit="answer") as progress:
            for error, correction, exception in run_bounded(ask, todo, concurrency):
                progress.update()
                if isinstance(exception, OracleError):
                    failures += 1
                    log.warning("%s: no correction this run: %s", error["id"], exception)
                    continue
                if exception is not None:
                    raise exception
                if correction is not None and not isinstance(correction, str):
                    raise TypeError(f"the oracle returned {type(correction).__name__} for {error['id']!r}; "
                                    "expected a string or None")
                corrections.append({**error, "correction": correction})
    return {"already corrected before this run": len(errors) - len(todo),
            "answered by the oracle now": len(todo) - failures, FAILURES: failures,
            **counts(errors, corrections.records)}


def counts(errors, corrections):
    """What became of the ``errors`` given ``corrections`` (id -> record), for summary and report."""
    answered = [corrections[e["id"]] for e in errors if e["id"] in corrections]
    return {"errors": len(errors),
            "not corrected (oracle failed, or run unfinished)": len(errors) - len(answered),
            "oracle answered": len(answered),
            "oracle offered no correction": sum(r["correction"] is None for r in answered)}
