"""Problems with known answers, as ``spot-fast-rectify elicit`` and ``spot-fast-eval`` read them.

A problems file is JSONL with ``question`` (or ``prompt``), ``answer`` (or ``ground_truth``; a string
or a number) and an optional ``id`` (default ``line<N>``); ids are unique. A malformed line raises
``jsonl.InputError`` naming the file and the line.
"""
from spot_fast.jsonl import InputError, read_unique


def problem_fields(line):
    """The id, question and answer of one problems line (a ``jsonl.Line``)."""
    return {"id": line.record_id(default=f"line{line.number}"),
            "question": line.text("question", "prompt"),
            "answer": line.text("answer", "ground_truth", numbers=True)}


def read_problems(path, fields=problem_fields):
    """The problems of the JSONL file ``path`` (``fields(line)`` each, ids unique); a file without any
    is refused, as the trainer refuses one without pairs: there would be nothing to sample."""
    problems = read_unique(path, fields)
    if not problems:
        raise InputError(path, 0, "no problems (the file holds no non-blank line)")
    return problems
