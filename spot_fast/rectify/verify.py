"""Stage 3, verify and filter: keep a correction only if it is right and a small edit.

For every record of ``corrections.jsonl`` the first failing check names its drop reason:

1. the Oracle offered a correction;
2. the correction has a boxed final answer;
3. that answer equals the ground truth (``sampling.answers.equivalent``);
4. the original answer is wrong (guards against a grading slip upstream: a pair of two right answers
   would teach the model to avoid a correct answer);
5. the change ratio ``R = 1 - |LCS(y-, y+)| / |y+|`` over the trainer tokenizer's token ids (no
   special tokens) is at most ``gamma`` (the paper uses 0.6).

Output: ``verified.jsonl``, every record with ``corrected_prediction``, ``change_ratio`` (null without a
correction), ``kept``, ``drop_reason`` (null when kept) and the ``gamma`` it was judged with, written
atomically. Nothing is written while some wrong answer is not final yet (``correct.check_all_final``). The stage is cheap
(tokenization and a bit-parallel LCS per pair), so it simply reruns in full.
"""
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from spot_fast.jsonl import read_unique, write_jsonl_atomic
from spot_fast.models import load_tokenizer
from spot_fast.rectify import layout
from spot_fast.rectify.correct import check_all_final, error_fields
from spot_fast.rectify.lcs import change_ratio
from spot_fast.sampling.answers import grade

NO_CORRECTION = "oracle offered no correction"
NO_BOX = "correction has no boxed answer"
WRONG = "correction's answer is wrong"
ORIGINAL_RIGHT = "original answer is already right"
TOO_CHANGED = "change ratio above gamma"
DROP_REASONS = (NO_CORRECTION, NO_BOX, WRONG, ORIGINAL_RIGHT, TOO_CHANGED)


def correction_fields(line):
    if "correction" not in line.record:
        raise line.error("missing field 'correction'")
    return {**error_fields(line), "correction": line.optional_text("correction")}


def judge(record, token_ids, gamma):
    """The verification fields for one correction record (see the module docstring)."""
    correction = record["correction"]
    if correction is None:
        return {"corrected_prediction": None, "change_ratio": None, "kept": False,
                "drop_reason": NO_CORRECTION}
    ratio = change_ratio(token_ids(record["response"]), token_ids(correction))
    predicted, right = grade(correction, record["answer"])
    if predicted is None:
        reason = NO_BOX
    elif not right:
        reason = WRONG
    elif grade(record["response"], record["answer"])[1]:
        reason = ORIGINAL_RIGHT
    elif ratio > gamma:
        reason = TOO_CHANGED
    else:
        reason = None
    return {"corrected_prediction": predicted, "change_ratio": ratio, "kept": reason is None,
            "drop_reason": reason}


def verify(workdir, tokenizer_name, gamma=0.6):
    """Judge every correction and write ``verified.jsonl``; returns the stage summary."""
    workdir = Path(workdir)
    records = read_unique(layout.stage_input(workdir, layout.CORRECTIONS), correction_fields)
    check_all_final(workdir, {r["id"] for r in records})
    tokenizer = load_tokenizer(tokenizer_name)

    def token_ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    verified = [{**r, **judge(r, token_ids, gamma), "gamma": gamma} for r in tqdm(records, desc="verify", unit="pair")]
    write_jsonl_atomic(workdir / layout.VERIFIED, verified)
    return counts(verified)


def counts(verified):
    """Kept records and drops by reason (for the stage summary and the report)."""
    reasons = Counter(r["drop_reason"] for r in verified)
    return {"corrections": len(verified), "kept": reasons[None],
            **{f"dropped: {reason}": reasons[reason] for reason in DROP_REASONS}}
