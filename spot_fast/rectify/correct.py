"""Stage 2, correct: ask an Oracle for a minimal-edit correction of every wrong answer.

Input: ``errors.jsonl`` (records with ``id``, ``question`` or ``prompt``, ``answer`` or
``ground_truth``, ``response`` or ``original_answer``). Output: ``corrections.jsonl``, one final
record per wrong answer: the input record plus ``correction`` (the Oracle's text, or null when it
declined, or when it replied without a marked correction ``max_unmarked_replies`` times); and
``unmarked_replies.jsonl``, every reply without a marked correction (``id`` ``<error id>/<n>``,
``error_id``, ``reply``).

What becomes of one Oracle call:
- a correction (a string) or a refusal (None): the final record is written;
- ``UnmarkedReply``: the reply is stored in ``unmarked_replies.jsonl``, and the answer is asked again
  on the next run, until its ``max_unmarked_replies``-th such reply (earlier runs count), which writes
  a final record without a correction;
- ``OracleError`` (a permanent HTTP error, or retries exhausted): nothing is written; the next run
  asks again;
- ``OracleUnreachable`` (the client's circuit breaker: the endpoint stopped responding): the stage
  stops at once, keeping everything written; a rerun resumes. Any other exception from an Oracle is
  a bug: it stops the stage the same way.

Invariants, whatever happens to the process (crash, SIGKILL, Ctrl-C):
- every finished record is on disk before the next one is written (``AppendLog``: one complete
  line, fsync); a rerun skips the ids already final, so ids are never duplicated and finished work
  is never lost or redone;
- only the main thread writes; Oracle calls run on at most ``concurrency`` worker threads;
- Ctrl-C stops new calls and writes every reply already received before the stage exits
  (``run_bounded``): only the calls in flight are lost.
"""
import logging
import queue
import signal
import threading
from collections import Counter
from contextlib import closing
from pathlib import Path

from tqdm import tqdm

from spot_fast.jsonl import AppendLog, read_unique
from spot_fast.rectify import layout
from spot_fast.rectify.chat_client import OracleError
from spot_fast.rectify.oracle import UnmarkedReply

log = logging.getLogger(__name__)

# The stage summary. What this run did with each answer it asked about:
BEFORE = "final before this run"
ASKED = "asked the oracle now"
CORRECTED = "corrected now"
DECLINED = "declined by the oracle now (final, no correction)"
UNMARKED = f"replies without a marked correction now (kept in {layout.UNMARKED}; asked again next run)"
GAVE_UP = "given up now after the last allowed reply without a marked correction (final, no correction)"
FAILED = "oracle calls failed now (nothing written; asked again next run)"
# ... and where all the wrong answers stand after it (also in the report):
WRONG_ANSWERS = f"wrong answers in {layout.ERRORS}"
WITH_CORRECTION = f"final with a correction in {layout.CORRECTIONS}"
WITHOUT_CORRECTION = "final without a correction (declined, or given up)"
UNFINISHED = "not final yet (run again)"


class NotReady(Exception):
    """A stage cannot give a usable output yet (exit status 1); the message says what to run."""


def check_all_final(workdir, final_ids):
    """Raise ``NotReady`` unless every wrong answer in ``errors.jsonl`` has its id in ``final_ids``
    (the ids of ``corrections.jsonl``): verify and build must not pass an unfinished ``correct`` off
    as done, with its missing answers silently absent from the pairs. Without ``errors.jsonl`` (a run
    that starts from its own corrections) there is nothing to check."""
    path = Path(workdir) / layout.ERRORS
    if not path.is_file():
        return
    errors = read_unique(path, error_fields)
    missing = sum(error["id"] not in final_ids for error in errors)
    if missing:
        raise NotReady(f"{missing} of the {len(errors)} wrong answers in {layout.ERRORS} are not final yet in "
                       f"{layout.CORRECTIONS} (an Oracle call failed or was stopped, or replied without a marked "
                       "correction): run `correct` again")


def error_fields(line):
    """The record of a wrong answer on ``line``, with the field names the later stages use."""
    return {**line.record, "id": line.record_id(),
            "question": line.text("question", "prompt"),
            "answer": line.text("answer", "ground_truth", numbers=True),
            "response": line.text("response", "original_answer", empty=True)}


def run_bounded(function, items, workers):
    """Yield ``(item, result, exception)`` for each item as ``function(item)`` finishes.

    At most ``workers`` calls run at once: that many daemon threads take items from one queue. When
    the consumer stops early (an exception), idle workers start no new call, and calls in flight are
    abandoned: daemon threads do not hold up the exit of the process.

    Ctrl-C (SIGINT, when called from the main thread) is deferred while the generator is open: it
    never lands in the middle of the consumer's work on one result (a half-handled result could be
    written twice, or lost). Instead workers start no new call, every result already finished is still
    yielded, then ``KeyboardInterrupt`` is raised; only the calls in flight are lost (a Ctrl-C during
    the last result has nothing left to stop: the generator ends normally). A second Ctrl-C raises at
    once, for a consumer that hangs.
    """
    todo, done, stop = queue.SimpleQueue(), queue.SimpleQueue(), threading.Event()
    interrupted = object()  # put into ``done`` by the SIGINT handler (SimpleQueue.put is reentrant)
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

    def on_interrupt(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        done.put(interrupted)

    for _ in range(min(workers, len(items))):
        threading.Thread(target=work, daemon=True).start()
    # (not where Ctrl-C is ignored, as in a background job, nor off the main thread, where it cannot be)
    defer = (threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
    previous_handler = signal.signal(signal.SIGINT, on_interrupt) if defer else None
    try:
        for _ in range(len(items)):
            result = done.get()
            if result is interrupted:
                yield from finished_results(done, interrupted)
                raise KeyboardInterrupt
            yield result
    finally:
        stop.set()
        if defer:
            signal.signal(signal.SIGINT, previous_handler)


def finished_results(done, interrupted):
    """The results waiting in ``done`` now, without waiting for calls in flight."""
    while True:
        try:
            result = done.get_nowait()
        except queue.Empty:
            return
        if result is not interrupted:
            yield result


def correct(workdir, oracle, concurrency=8, max_unmarked_replies=3):
    """Ask the Oracle about every error without a final record; returns the stage summary."""
    workdir = Path(workdir)
    errors = read_unique(layout.stage_input(workdir, layout.ERRORS), error_fields)
    now = Counter()

    def ask(error):
        return oracle(question=error["question"], wrong_answer=error["response"],
                      ground_truth=error["answer"])

    with AppendLog(workdir / layout.CORRECTIONS) as corrections, AppendLog(workdir / layout.UNMARKED) as unmarked:
        replies = unmarked_reply_counts(unmarked)
        todo = [error for error in errors if error["id"] not in corrections]
        with tqdm(total=len(todo), desc="correct", unit="answer") as progress, \
                closing(run_bounded(ask, todo, concurrency)) as results:
            for error, correction, exception in results:
                progress.update()
                if isinstance(exception, OracleError):
                    now[FAILED] += 1
                    log.warning("%s: no correction this run: %s", error["id"], exception)
                    continue
                if isinstance(exception, UnmarkedReply):
                    replies[error["id"]] += 1
                    count = replies[error["id"]]
                    unmarked.append({"id": f"{error['id']}/{count}", "error_id": error["id"], "reply": exception.reply})
                    if count < max_unmarked_replies:
                        now[UNMARKED] += 1
                        continue
                    now[GAVE_UP] += 1
                    correction = None
                elif exception is not None:
                    raise exception
                elif correction is None:
                    now[DECLINED] += 1
                elif isinstance(correction, str):
                    now[CORRECTED] += 1
                else:
                    raise TypeError(f"the oracle returned {type(correction).__name__} for {error['id']!r}; "
                                    "expected a string or None")
                corrections.append({**error, "correction": correction})
    return {BEFORE: len(errors) - len(todo), ASKED: len(todo),
            **{what: now[what] for what in (CORRECTED, DECLINED, UNMARKED, GAVE_UP, FAILED)},
            **counts(errors, corrections.records)}


def unmarked_reply_counts(unmarked):
    """error id -> replies without a marked correction stored in the ``unmarked`` log."""
    replies = Counter()
    for record_id, record in unmarked.records.items():
        if not isinstance(record.get("error_id"), str):
            raise ValueError(f"{unmarked.path}: record {record_id!r} has no string field 'error_id'")
        replies[record["error_id"]] += 1
    return replies


def counts(errors, corrections):
    """Where the ``errors`` stand given ``corrections`` (id -> final record), for summary and report."""
    final = [corrections[e["id"]] for e in errors if e["id"] in corrections]
    without = sum(r["correction"] is None for r in final)
    return {WRONG_ANSWERS: len(errors), WITH_CORRECTION: len(final) - without, WITHOUT_CORRECTION: without,
            UNFINISHED: len(errors) - len(final)}
