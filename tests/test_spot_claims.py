"""The controlled SPoT experiment (``benchmarks/spot_claims.py``): its task and Oracles, and the whole
pipeline at smoke scale (pre-train, rectify with both Oracles, six post-training runs, evaluation,
report)."""
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

import claims_task as task  # noqa: E402  (benchmarks/: tests/conftest.py)
import spot_claims  # noqa: E402

from spot_fast.rectify.lcs import change_ratio  # noqa: E402
from spot_fast.sampling.answers import grade  # noqa: E402


def check_solution(text, a, b):
    """Every column line of ``text`` recomputed from a, b and the line before it; returns the index
    of the first wrong line (the opening is line 0) or None when all are right."""
    lines = text.split("\n")
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    carry, written = 0, ""
    for column, line in enumerate(lines[1:-1]):
        da = int(digits_a[column]) if column < len(digits_a) else 0
        db = int(digits_b[column]) if column < len(digits_b) else 0
        written = str((da + db + carry) % 10) + written
        if line != f"{da}+{db}+{carry}={da + db + carry}, {written}":
            return column + 1
        carry = (da + db + carry) // 10
    return None if lines[-1] == f"\\boxed{{{a + b}}}" else len(lines) - 1


@pytest.mark.parametrize("a,b", [(4821, 379), (999, 1), (100, 10), (5005, 9995), (1234, 8765)])
def test_correct_solution_is_right_line_by_line(a, b):
    text = task.addition_solution(a, b, opening=1)
    assert check_solution(text, a, b) is None
    assert text.split("\n")[0] == task.OPENINGS[1].format(a=a, b=b)
    assert grade(text, str(a + b)) == (str(a + b), True)


def test_a_slip_is_one_wrong_column_that_later_lines_follow():
    rng = random.Random(0)
    for _ in range(300):
        a, b = task.random_addends(rng)
        text = task.slipped_solution(a, b, rng.randrange(len(task.OPENINGS)), rng)
        assert not grade(text, str(a + b))[1], text
        first_wrong = check_solution(text, a, b)
        assert first_wrong is not None and 1 <= first_wrong
        wrong_line = text.split("\n")[first_wrong]
        da, db, carry, total = map(int, re.match(r"(\d)\+(\d)\+(\d)=(\d+),", wrong_line).groups())
        assert abs(total - (da + db + carry)) == 1  # the slip: one sum off by one
        lines = text.split("\n")[first_wrong + 1:-1]  # later lines follow from the written sums
        for before, line in zip(text.split("\n")[first_wrong:-2], lines):
            previous_total = int(before.split("=")[1].split(",")[0])
            da, db, carry, total = map(int, re.match(r"(\d)\+(\d)\+(\d)=(\d+),", line).groups())
            assert carry == previous_total // 10 and total == da + db + carry


def test_minimal_edit_keeps_everything_before_the_first_wrong_line():
    rng = random.Random(1)
    ratios = []
    for _ in range(200):
        a, b = task.random_addends(rng)
        question = spot_claims.prompt(task.addition_question(a, b))
        wrong = task.slipped_solution(a, b, rng.randrange(len(task.OPENINGS)), rng)
        fixed = task.minimal_edit(question, wrong, str(a + b))
        first_wrong = check_solution(wrong, a, b)
        assert check_solution(fixed, a, b) is None
        assert fixed.split("\n")[:first_wrong] == wrong.split("\n")[:first_wrong]
        ratios.append(change_ratio(list(wrong), list(fixed)))
    assert max(ratios) < 0.6  # every slip correction passes verify's gamma


def test_minimal_edit_of_unrecognisable_text_and_the_rewrite_are_whole_solutions():
    question = spot_claims.prompt(task.addition_question(57, 68))
    assert check_solution(task.minimal_edit(question, "5+7=12\n\\boxed{12}", "125"), 57, 68) is None
    rewrite = task.rewrite(question, task.addition_solution(57, 68), "125")
    assert grade(rewrite, "125") == ("125", True)
    assert "7+8+0 is 15, write 5 carry 1; 5+6+1 is 12, write 2 carry 1; 0+0+1 is 1, write 1 carry 0" in rewrite
    with pytest.raises(ValueError, match="not an addition problem"):
        task.minimal_edit("Reverse the digits of 1234.", "x", "4321")


def test_character_tokenizer_round_trips_the_task_text():
    tokenizer = task.char_tokenizer()
    text = task.addition_solution(4821, 379) + "\n" + task.INSTRUCTION
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Compute 1+2."}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
    assert rendered == "<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_ids_to_tokens(tokenizer(rendered)["input_ids"][0]) == task.START_TOKEN


def test_data_holds_out_the_evaluation_problems(tmp_path):
    scale = spot_claims.SMOKE
    spot_claims.make_data(scale, tmp_path)
    read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    corpus_prompts = {r["prompt"] for r in read("pretrain.jsonl")}
    for name in ("problems.jsonl", "addition.jsonl", "reversal.jsonl"):
        for problem in read(name):
            assert spot_claims.prompt(problem["question"]) not in corpus_prompts
            assert problem["question"] not in corpus_prompts
    assert len(read("pretrain.jsonl")) == scale.pretrain_steps * scale.pretrain_batch


def test_smoke_experiment_runs_end_to_end(tmp_path):
    """The whole pipeline at toy scale, through the users' commands; every stage's output is read back."""
    finished = subprocess.run([sys.executable, "benchmarks/spot_claims.py", "--smoke", "--workdir", str(tmp_path)],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    summary = json.loads((tmp_path / "spot_claims.json").read_text())
    assert [m["method"] for m in summary["methods"]] == [label for label, _, _ in spot_claims.METHODS]
    assert len(summary["claims"]) == 6 and (tmp_path / "spot_claims.png").stat().st_size > 10_000
    assert all(c["reproduced"] is None for c in summary["claims"])  # toy scale: no verdicts
    assert "| yes |" not in (tmp_path / "spot_claims.md").read_text().split("| claim |")[1].split("\n\n")[0]
    pairs = [json.loads(line) for line in (tmp_path / "rectify-minimal" / "pairs.jsonl").read_text().splitlines()]
    direct = [json.loads(line) for line in (tmp_path / "rectify-direct" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and summary["pairs"] == {"minimal": len(pairs), "direct": len(direct)}
    for pair in pairs + direct:  # every chosen answer is right, every rejected one wrong
        assert grade(pair["gemini_corrected_answer"], pair["answer"])[1]
        assert not grade(pair["original_answer"], pair["answer"])[1]
    evaluation = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len(evaluation["models"]) == 1 + len(spot_claims.METHODS) * len(spot_claims.SMOKE.seeds)
    for method in summary["methods"]:
        for name in method["runs"]:
            metrics = spot_claims.read_metrics(tmp_path / "runs" / name)
            assert metrics[-1]["step"] == spot_claims.SMOKE.post_steps
            assert any("retain/kl" in record for record in metrics)
    assert "| SPoT (spot_bco) |" in (tmp_path / "spot_claims.md").read_text()


def test_learning_rate_choice_takes_the_best_validation_and_the_smaller_rate_on_a_tie():
    stem = Path(spot_claims.VALIDATION).stem
    validation = {"a1": {stem: 0.5}, "a2": {stem: 0.7}, "a3": {stem: 0.6},
                  "b1": {stem: 0.4}, "b2": {stem: 0.4}, "b3": {stem: 0.3}}
    names = {"A": {1e-5: "a1", 1e-4: "a2", 1e-3: "a3"}, "B": {1e-3: "b3", 1e-4: "b2", 1e-5: "b1"}}
    assert spot_claims.choose_learning_rates(validation, names) == {"A": 1e-4, "B": 1e-5}


def method(accuracy, gain=0.0, old_change=0.0):
    """A summary entry of ``summarize`` with the fields the claims read."""
    sweep = {"0.001": {"retain_kl_end": 1e-3, "chosen_reward_late": 0.1}}
    return {"reasoning": accuracy, "old_skill": accuracy, "gain": gain, "gain_std": 0.0, "old_change": old_change,
            "old_change_std": 0.0, "sweep": sweep}


LABELS = ("SPoT (spot_bco)", "SFT+ (y+)", "DPO", "SFT (direct rewrites)")


@pytest.mark.parametrize("accuracy", [0.0, 1.0])
def test_claims_from_accuracies_that_are_all_zero_or_all_one_are_not_measurable(accuracy):
    start = {spot_claims.REASONING: accuracy, spot_claims.OLD_SKILL: accuracy}
    verdicts = [c["reproduced"] for c in spot_claims.claims({label: method(accuracy) for label in LABELS}, start)]
    assert verdicts == [None, None, False, False, None, False]  # the accuracy claims; the others are read
    by_label = {label: method(0.5, gain=0.1 * i) for i, label in enumerate(LABELS)}
    measured = spot_claims.claims(by_label, {spot_claims.REASONING: 0.0, spot_claims.OLD_SKILL: 0.0})
    assert [c["reproduced"] for c in measured][0] is False and None not in [c["reproduced"] for c in measured]
    # Sweep signals that did not move: not measurable.
    still = {label: method(0.5) for label in LABELS}
    for entry in still.values():
        entry["sweep"] = {"0.001": {"retain_kl_end": 0.0, "chosen_reward_late": 0.0}}
    assert [c["reproduced"] for c in spot_claims.claims(still, start)][2:4] == [None, None]
    # Runs at 0 after a start that scored: the methods lost what the start had, a measured outcome.
    lost = spot_claims.claims({label: method(0.0, gain=-0.5) for label in LABELS},
                              {spot_claims.REASONING: 0.5, spot_claims.OLD_SKILL: 0.5})
    assert None not in [c["reproduced"] for c in lost]
    # At smoke scale no claim gets a verdict, whatever its numbers.
    assert not spot_claims.SMOKE.verdicts and spot_claims.FULL.verdicts
    smoke = spot_claims.claims(by_label, start, verdicts=False)
    assert all(c["reproduced"] is None and c["detail"].startswith("smoke scale, no verdict") for c in smoke)
