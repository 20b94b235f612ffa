"""Programmatic Oracles for the rectification tests (importable as ``rectify_oracles``: tests/conftest.py
puts tests/helpers/ on sys.path, and the subprocess tests put it on PYTHONPATH)."""
import time

from spot_fast.rectify.oracle import replace_final_answer


def slow_fix(question, wrong_answer, ground_truth):
    """``replace_final_answer`` after 0.1 s, so that a run can be interrupted in the middle."""
    time.sleep(0.1)
    return replace_final_answer(question, wrong_answer, ground_truth)


REWRITE = "Let me start over. Counting everything carefully, step by step, the total comes to \\boxed{%s}."


def by_truth(question, wrong_answer, ground_truth):
    """One behaviour per ground truth of the first bundled problems, to reach every verify outcome:
    145 -> a full rewrite (too large a change), 53 -> a wrong final answer, 15 -> no correction,
    anything else -> a minimal edit of the final answer."""
    if ground_truth == "145":
        return REWRITE % ground_truth
    if ground_truth == "53":
        return replace_final_answer(question, wrong_answer, "54")
    if ground_truth == "15":
        return None
    return replace_final_answer(question, wrong_answer, ground_truth)
