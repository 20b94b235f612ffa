"""Stage 4, build: the training pairs of the kept corrections, and the report.

``pairs.jsonl`` holds one line per kept correction in the SPoT format the trainer reads:
``question`` (x), ``original_answer`` (y-, the student's wrong answer), ``gemini_corrected_answer``
(y+, the Oracle's verified minimal edit), plus ``id``, ``answer`` and ``change_ratio``.

Build refuses (``correct.NotReady``, exit status 1) to pass incomplete data off as done: while some wrong
answer is not final yet, or ``verified.jsonl`` does not judge exactly the final corrections (run
``verify`` again), it writes nothing; when no correction was kept, it writes the report (with the drop
reasons) and no ``pairs.jsonl``, removing an earlier one.
"""
from pathlib import Path

from spot_fast.jsonl import read_unique, write_jsonl_atomic
from spot_fast.models import load_tokenizer
from spot_fast.rectify import layout
from spot_fast.rectify.correct import NotReady, check_all_final
from spot_fast.rectify.report import write_report
from spot_fast.rectify.verify import correction_fields


def verified_fields(line):
    record = correction_fields(line)
    if not isinstance(record.get("kept"), bool):
        raise line.error("field 'kept' must be true or false")
    if record["kept"] and not isinstance(record.get("change_ratio"), (int, float)):
        raise line.error("field 'change_ratio' must be a number in a kept record")
    return record


def to_pair(record):
    return {"id": record["id"], "question": record["question"], "original_answer": record["response"],
            "gemini_corrected_answer": record["correction"], "answer": record["answer"],
            "change_ratio": record["change_ratio"]}


def build(workdir, tokenizer_name, examples=3):
    """Write ``pairs.jsonl`` and the report; returns the stage summary."""
    workdir = Path(workdir)
    final_ids = {r["id"] for r in read_unique(layout.stage_input(workdir, layout.CORRECTIONS), correction_fields)}
    check_all_final(workdir, final_ids)
    verified = read_unique(layout.stage_input(workdir, layout.VERIFIED), verified_fields)
    if {r["id"] for r in verified} != final_ids:
        raise NotReady(f"{layout.VERIFIED} does not judge the corrections now in {layout.CORRECTIONS}: "
                       "run `verify` again")
    pairs = [to_pair(r) for r in verified if r["kept"]]
    write_report(workdir, verified, pairs, load_tokenizer(tokenizer_name), examples)
    if not pairs:
        (workdir / layout.PAIRS).unlink(missing_ok=True)
        raise NotReady(f"no correction was kept, so there are no training pairs; {workdir / layout.REPORT} "
                       "counts the drop reasons")
    write_jsonl_atomic(workdir / layout.PAIRS, pairs)
    return {f"verified records in {layout.VERIFIED}": len(verified),
            f"pairs written to {layout.PAIRS}": len(pairs),
            "report": str(workdir / layout.REPORT)}
