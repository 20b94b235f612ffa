"""Evaluation metrics against hand-computed values, and benchmark prompts, targets and grading
(spot_fast.evaluate.scores, spot_fast.evaluate.benchmark_files)."""
import json
import math
import re

import pytest

from spot_fast.evaluate.benchmark_files import (
    choice_letter, grade_response, read_benchmark, read_benchmarks, sample_request)
from spot_fast.evaluate.scores import pass_at_k, pass_levels, summarize
from spot_fast.jsonl import InputError

# Three problems answered k = 4 times; grades[problem][repetition].
GRADES = {"p1": [1, 1, 0, 1], "p2": [0, 0, 0, 0], "p3": [1, 0, 0, 0]}
TOKENS = {"p1": [10, 20, 30, 40], "p2": [16, 16, 5, 16], "p3": [1, 2, 3, 4]}


def graded_records():
    return [{"problem_id": p, "sample": j, "correct": bool(GRADES[p][j]), "tokens": TOKENS[p][j],
             "truncated": TOKENS[p][j] == 16, "predicted": None if p == "p2" else "1"}
            for p in GRADES for j in range(4)]


def test_summary_matches_hand_computed_values():
    m = summarize(graded_records(), samples=4)
    # run accuracies: (1+0+1)/3, (1+0+0)/3, 0/3, (1+0+0)/3
    assert m["runs"] == pytest.approx([2 / 3, 1 / 3, 0, 1 / 3])
    assert m["avg"] == pytest.approx(1 / 3)  # 4 right of 12
    # deviations from 1/3: 1/3, 0, -1/3, 0 -> variance (1/9 + 1/9) / 4 = 1/18
    assert m["std"] == pytest.approx(math.sqrt(1 / 18))
    # c = 3, 0, 1 of n = 4. pass@1 = c/n; pass@2 = 1 - C(4-c, 2)/C(4, 2) = 1, 0, 1 - 3/6; pass@4 = 1, 0, 1
    assert m["pass_at"] == pytest.approx({"1": 1 / 3, "2": 1.5 / 3, "4": 2 / 3})
    assert m["mean_tokens"] == pytest.approx((100 + 53 + 10) / 12)
    assert m["truncation_rate"] == pytest.approx(3 / 12)
    assert m["no_answer_rate"] == pytest.approx(4 / 12)
    assert (m["problems"], m["samples"]) == (3, 4)


def test_one_repetition_has_no_spread():
    records = [r for r in graded_records() if r["sample"] == 0]
    m = summarize(records, samples=1)
    assert (m["avg"], m["std"], m["pass_at"]) == (pytest.approx(2 / 3), 0, {"1": pytest.approx(2 / 3)})


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (10, 3, 1, 0.3),
    (10, 0, 10, 0.0),
    (10, 1, 10, 1.0),
    (5, 2, 4, 1.0),  # n - c < k: every draw of 4 includes a right one
    (4, 2, 2, 1 - 1 / 6),
])
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_pass_levels():
    assert pass_levels(1) == [1]
    assert pass_levels(5) == [1, 2, 4, 5]
    assert pass_levels(16) == [1, 2, 4, 8, 16]


def test_summary_refuses_missing_or_repeated_samples():
    records = graded_records()
    with pytest.raises(ValueError, match=r"'p1' has samples \[0, 1, 2\], expected 0..3"):
        summarize([r for r in records if (r["problem_id"], r["sample"]) != ("p1", 3)], samples=4)
    with pytest.raises(ValueError, match="'p2' has sample 0 twice"):
        summarize(records + [records[4]], samples=4)


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


CHOICE_PROBLEM = {"id": "q1", "question": "Pick the noble gas.", "choices": ["neon", "iron", "salt", "wood"],
                  "answer": "neon"}


def listed_choices(prompt):
    """{letter: choice text} as the prompt lists them."""
    return dict(re.findall(r"^([A-Z])\) (.*)$", prompt, flags=re.MULTILINE))


def test_choices_are_reshuffled_per_repetition_and_the_target_is_the_right_choice_letter(tmp_path):
    problem = read_benchmark(write_lines(tmp_path / "gpqa.jsonl", [CHOICE_PROBLEM])).problems[0]
    requests = [sample_request("gpqa", problem, k, seed=0) for k in range(8)]
    orders = set()
    for request in requests:
        shown = listed_choices(request["prompt"])
        assert sorted(shown.values()) == sorted(CHOICE_PROBLEM["choices"]) and len(shown) == 4
        assert shown[request["target"]] == "neon"
        orders.add(tuple(shown.values()))
    assert len(orders) > 1
    assert [sample_request("gpqa", problem, k, seed=0) for k in range(8)] == requests
    assert [sample_request("gpqa", problem, k, seed=1)["prompt"] for k in range(8)] != [r["prompt"] for r in requests]


def test_math_request_asks_for_a_box_and_targets_the_ground_truth(tmp_path):
    problem = read_benchmark(write_lines(tmp_path / "m.jsonl", [{"question": "1+1?", "answer": 2}])).problems[0]
    request = sample_request("m", problem, 3, seed=0)
    assert request["id"] == "m/line1#3" and request["target"] == "2" and "\\boxed{}" in request["prompt"]
    assert grade_response("math", r"so \boxed{2}", request["target"]) == ("2", True)


@pytest.mark.parametrize("boxed, letter", [
    ("B", "B"), ("(B)", "B"), (r"\text{B}", "B"), (r"\textbf{(C)}", "C"), (" D ", "D"),
    ("BC", None), ("b", None), ("42", None), (None, None),
])
def test_choice_letter(boxed, letter):
    assert choice_letter(boxed) == letter


def test_choice_grading_compares_letters():
    assert grade_response("choice", r"The answer is \boxed{(B)}.", "B") == ("(B)", True)
    assert grade_response("choice", r"The answer is \boxed{B}.", "C") == ("B", False)
    assert grade_response("choice", "no box", "C") == (None, False)


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "answer": "x", "choices": ["x", "y"], "kind": "essay"}, "field 'kind' must be one of"),
    ({"question": "q", "answer": "z", "choices": ["x", "y"]}, "answer 'z' is not one of the choices"),
    ({"question": "q", "answer": "x", "choices": ["x", "x"]}, "repeated choice"),
    ({"question": "q", "answer": "x", "choices": "x, y"}, "must be a list of 2 to 26 strings"),
    ({"question": "q", "answer": "x", "choices": ["x", ""]}, "non-empty strings"),
    ({"question": "q", "answer": "x", "kind": "choice"}, "must be a list"),
    ({"question": "q", "answer": "x", "choices": ["x", "y"], "kind": "math"}, "has no 'choices'"),
    ({"question": "q"}, "missing field 'answer' or 'ground_truth'"),
])
def test_bad_benchmark_lines_are_located(tmp_path, record, message):
    path = write_lines(tmp_path / "bench.jsonl", [CHOICE_PROBLEM, record])
    with pytest.raises(InputError, match=re.escape("bench.jsonl:2: ") + ".*" + re.escape(message)):
        read_benchmark(path)


def test_benchmark_names_must_differ(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    paths = [write_lines(tmp_path / d / "math.jsonl", [CHOICE_PROBLEM]) for d in "ab"]
    with pytest.raises(ValueError, match="same name 'math'"):
        read_benchmarks(paths)
