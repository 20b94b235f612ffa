"""The four stages end to end on the bundled problems with the built-in tiny model, through the
command line; the verify decisions; and the errors for malformed input."""
import json
import os
import re
import stat
from pathlib import Path

import pytest

from spot_fast.data import load_pairs
from spot_fast.jsonl import read_jsonl, write_jsonl_atomic
from spot_fast.models import BUILTIN_MODEL, load_tokenizer
from spot_fast.rectify import correct, layout, verify
from spot_fast.rectify.__main__ import main
from spot_fast.rectify.lcs import change_ratio
from spot_fast.rectify.report import histogram_figure, marked_diff
from spot_fast.sampling.answers import last_boxed

PROBLEMS = Path(__file__).resolve().parents[1] / "spot_fast" / "assets" / "problems.jsonl"


def records(path):
    return [line.record for line in read_jsonl(path)]


def run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture
def umask_002():
    """A group-writable umask (0o002), so that a mode fixed in the code (0o644, or mkstemp's 0o600) shows."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_pipeline_end_to_end(tmp_path, capsys, umask_002):
    elicit = ["elicit", "--workdir", tmp_path, "--problems", PROBLEMS, "--limit", 4, "--samples", 2,
              "--batch-size", 3, "--max-new-tokens", 24]
    assert run(*elicit) == 0
    results = records(tmp_path / layout.RESULTS)
    expected_ids = [f"demo-{p}#{k}" for p in range(280, 284) for k in (0, 1)]
    assert sorted(r["id"] for r in results) == expected_ids
    assert all(not r["correct"] for r in results)  # random weights
    assert len(records(tmp_path / layout.ERRORS)) == 8
    capsys.readouterr()
    assert run(*elicit) == 0  # resumed: nothing left to generate
    assert "samples generated now: 0" in capsys.readouterr().out
    assert len(records(tmp_path / layout.RESULTS)) == 8
    assert {r["model"] for r in results} == {BUILTIN_MODEL}
    settings = json.loads((tmp_path / layout.RESULTS_SETTINGS).read_text())
    assert settings["model"] == BUILTIN_MODEL and settings["sampling"]["max_new_tokens"] == 24
    # Samples of another model or other settings are never appended: refused, naming both values.
    for option, value, then, now in (("--model", "/other/model", repr(BUILTIN_MODEL), "'/other/model'"),
                                     ("--temperature", 1.0, "'temperature': 0.7", "'temperature': 1.0"),
                                     ("--max-new-tokens", 32, "'max_new_tokens': 24", "'max_new_tokens': 32")):
        assert run(*elicit, option, value) == 2
        error = capsys.readouterr().err
        assert f"{tmp_path / layout.RESULTS} holds samples drawn with other settings" in error
        assert then in error and now in error
    assert len(records(tmp_path / layout.RESULTS)) == 8
    # The elicited answers are the model's own samples: the trainer reads them as a retain set as they are.
    retain = load_pairs(tmp_path / layout.RESULTS, load_tokenizer(BUILTIN_MODEL), 8192, with_rejected=False)[0]
    assert len(retain) == 8 and all(p.rejected_ids is None for p in retain)

    assert run("correct", "--workdir", tmp_path, "--oracle-callable", "rectify_oracles:by_truth") == 0
    assert run("verify", "--workdir", tmp_path, "--gamma", 0.6) == 0
    reasons = {r["id"]: r["drop_reason"] for r in records(tmp_path / layout.VERIFIED)}
    assert {r["gamma"] for r in records(tmp_path / layout.VERIFIED)} == {0.6}  # the histogram's line
    assert reasons == {
        "demo-280#0": verify.TOO_CHANGED, "demo-280#1": verify.TOO_CHANGED,
        "demo-281#0": verify.WRONG, "demo-281#1": verify.WRONG,
        "demo-282#0": verify.NO_CORRECTION, "demo-282#1": verify.NO_CORRECTION,
        "demo-283#0": None, "demo-283#1": None}

    assert run("build", "--workdir", tmp_path) == 0
    pairs = records(tmp_path / layout.PAIRS)
    assert [p["id"] for p in pairs] == ["demo-283#0", "demo-283#1"]
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    by_id = {r["id"]: r for r in results}
    for pair in pairs:
        assert {"question", "original_answer", "gemini_corrected_answer"} <= set(pair)
        assert pair["original_answer"] == by_id[pair["id"]]["response"]
        assert pair["question"] == by_id[pair["id"]]["question"]
        assert last_boxed(pair["gemini_corrected_answer"]) == "6"
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in (pair["original_answer"], pair["gemini_corrected_answer"])]
        assert pair["change_ratio"] == pytest.approx(change_ratio(*ids)) and pair["change_ratio"] <= 0.6

    report = (tmp_path / layout.REPORT).read_text()
    assert "| verify | dropped: change ratio above gamma | 2 |" in report
    assert "| elicit | samples | 8 |" in report and "| build | pairs | 2 |" in report
    assert "{+" in report and "demo-283#" in report
    assert (tmp_path / layout.HISTOGRAM).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / layout.PREFIX_HISTOGRAM).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    prefix = json.loads((tmp_path / layout.REPORT_JSON).read_text())["kept_common_prefix"]
    assert 0 < prefix["answer_tokens_saved"] < prefix["mean"] <= 1  # the demo Oracle edits only the final value
    assert "## Common prefix" in report and "fewer answer tokens" in report
    counts = json.loads((tmp_path / layout.REPORT_JSON).read_text())["counts"]
    assert counts["verify"]["kept"] == 2 and counts["correct"][correct.WITHOUT_CORRECTION] == 2
    # Every output honours the umask like any new file (0o666 less the umask), and no temporary is left.
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    outputs = (layout.RESULTS, layout.RESULTS_SETTINGS, layout.ERRORS, layout.CORRECTIONS, layout.UNMARKED, layout.VERIFIED, layout.PAIRS,
               layout.REPORT, layout.REPORT_JSON, layout.HISTOGRAM, layout.PREFIX_HISTOGRAM)
    assert modes == {name: 0o664 for name in outputs}


def test_verify_decisions():
    tokenizer = load_tokenizer(BUILTIN_MODEL)

    def token_ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    wrong = "First, 3 * 4 = 13.\nThen 13 + 1 = 14.\nThe answer is \\boxed{14}."
    cases = [
        (wrong, "First, 3 * 4 = 12.\nThen 12 + 1 = 13.\nThe answer is \\boxed{13}.", None),
        (wrong, None, verify.NO_CORRECTION),
        (wrong, "First, 3 * 4 = 12.\nThen 12 + 1 = 13.\nThe answer is 13.", verify.NO_BOX),
        (wrong, "First, 3 * 4 = 12.\nThen 12 + 2 = 14.\nThe answer is \\boxed{14}.", verify.WRONG),
        ("3 * 4 + 1 = \\boxed{13}", "3 * 4 + 1 = \\boxed{13}", verify.ORIGINAL_RIGHT),
        (wrong, "Multiplying gives twelve; adding one gives thirteen: \\boxed{13}.", verify.TOO_CHANGED),
    ]
    for response, correction, reason in cases:
        record = {"id": "x", "question": "3 * 4 + 1?", "answer": "13", "response": response,
                  "correction": correction}
        judged = verify.judge(record, token_ids, gamma=0.6)
        assert judged["drop_reason"] == reason, (correction, judged)
        assert judged["kept"] == (reason is None)


def test_marked_diff_shows_the_edit():
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    rejected, chosen = "Tom has 12 apples. \\boxed{12}", "Tom has 13 apples. \\boxed{13}"
    diff = marked_diff(tokenizer, rejected, chosen)
    deleted, inserted = re.findall(r"\[-(.*?)-\]", diff), re.findall(r"\{\+(.*?)\+\}", diff)
    assert [d.strip() for d in deleted] == ["12", "12"] and [i.strip() for i in inserted] == ["13", "13"]
    assert re.sub(r"\{\+.*?\+\}", "", diff).replace("[-", "").replace("-]", "") == rejected
    assert re.sub(r"\[-.*?-\]", "", diff).replace("{+", "").replace("+}", "") == chosen


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


GOOD = '{"id": "p1", "question": "1 + 1?", "answer": "2"}'


@pytest.mark.parametrize("lines, message", [
    ([GOOD, '{"id": "p2", "question": "2 + 2?", "answer": "4"', GOOD], r"problems.jsonl:2: invalid JSON"),
    ([GOOD, '["a list"]'], r"problems.jsonl:2: expected a JSON object, got list"),
    ([GOOD, '{"id": "p2", "answer": "4"}'], r"problems.jsonl:2: missing field 'question' or 'prompt'"),
    ([GOOD, '{"id": "p2", "prompt": "2 + 2?", "answer": ["4"]}'],
     r"problems.jsonl:2: field 'answer' must be a string"),
    ([GOOD, '{"id": "p2", "question": "  ", "answer": "4"}'], r"problems.jsonl:2: field 'question' is empty"),
    ([GOOD, "", GOOD], r"problems.jsonl:3: duplicate id 'p1' \(first on line 1\)"),
])
def test_malformed_problems_are_reported_with_file_line_and_field(tmp_path, capsys, lines, message):
    write_lines(tmp_path / "problems.jsonl", lines)
    assert run("elicit", "--workdir", tmp_path / "work", "--problems", tmp_path / "problems.jsonl") == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "work" / layout.RESULTS).exists()


def test_malformed_errors_file_is_reported(tmp_path, capsys):
    write_jsonl_atomic(tmp_path / layout.ERRORS, [
        {"id": "a", "question": "q", "answer": "1", "response": "r"},
        {"id": "b", "question": "q", "answer": "1"}])
    assert run("correct", "--workdir", tmp_path, "--oracle-callable", "rectify_oracles:slow_fix") == 2
    assert f"{layout.ERRORS}:2: missing field 'response' or 'original_answer'" in capsys.readouterr().err


def test_numeric_answers_and_default_ids_are_accepted(tmp_path, capsys):
    write_lines(tmp_path / "problems.jsonl", ['{"prompt": "1 + 1?", "ground_truth": 2}'])
    assert run("elicit", "--workdir", tmp_path, "--problems", tmp_path / "problems.jsonl",
               "--max-new-tokens", 4) == 0
    [result] = records(tmp_path / layout.RESULTS)
    assert (result["id"], result["answer"], result["question"]) == ("line1#0", "2", "1 + 1?")


def test_verify_and_build_refuse_an_unfinished_correct_and_build_writes_no_empty_pairs(tmp_path, capsys):
    errors = [{"id": f"e{i}", "question": f"{i} + {i}?", "answer": str(2 * i), "response": "so \\boxed{0}"}
              for i in range(1, 4)]
    write_jsonl_atomic(tmp_path / layout.ERRORS, errors)
    write_jsonl_atomic(tmp_path / layout.CORRECTIONS, [{**errors[0], "correction": None}])  # the Oracle went down
    for stage in ("verify", "build"):
        assert run(stage, "--workdir", tmp_path) == 1
        err = capsys.readouterr().err
        assert f"{stage}: not done: 2 of the 3 wrong answers in {layout.ERRORS} are not final yet" in err
        assert "run `correct` again" in err
    assert not (tmp_path / layout.VERIFIED).exists() and not (tmp_path / layout.PAIRS).exists()

    # Every answer final, none corrected: verify is done, build writes the report but no pairs.
    write_jsonl_atomic(tmp_path / layout.CORRECTIONS, [{**e, "correction": None} for e in errors])
    assert run("build", "--workdir", tmp_path) == 2  # verify first
    assert f"has no {layout.VERIFIED}: run `spot-fast-rectify verify` first" in capsys.readouterr().err
    assert run("verify", "--workdir", tmp_path) == 0
    (tmp_path / layout.PAIRS).write_text('{"stale": true}\n')
    assert run("build", "--workdir", tmp_path) == 1
    assert "no correction was kept" in capsys.readouterr().err
    assert not (tmp_path / layout.PAIRS).exists() and "| verify | kept | 0 |" in (tmp_path / layout.REPORT).read_text()
    # A correction added after verify ran: build asks for verify again rather than dropping it.
    extra = {"id": "e4", "question": "4 + 4?", "answer": "8", "response": "so \\boxed{0}", "correction": "so \\boxed{8}"}
    write_jsonl_atomic(tmp_path / layout.ERRORS, errors + [extra])
    write_jsonl_atomic(tmp_path / layout.CORRECTIONS, [{**e, "correction": None} for e in errors] + [extra])
    assert run("build", "--workdir", tmp_path) == 1
    assert "run `verify` again" in capsys.readouterr().err and not (tmp_path / layout.PAIRS).exists()


def test_change_ratio_histogram_marks_gamma():
    verified = [{"change_ratio": ratio, "kept": ratio <= 0.4, "gamma": 0.4,
                 "drop_reason": None if ratio <= 0.4 else verify.TOO_CHANGED} for ratio in (0.05, 0.3, 0.5, 0.9)]
    [axes] = histogram_figure(verified).axes
    [line] = axes.lines
    assert list(line.get_xdata()) == [0.4, 0.4] and "gamma = 0.4" in line.get_label()
    assert "gamma = 0.4 (largest kept)" in [t.get_text() for t in axes.get_legend().get_texts()]
