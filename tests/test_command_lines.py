"""The command lines of spot_fast/train.py, spot-fast-rectify and spot-fast-eval answer alike, in one
line: an unreachable hub (the check the three share), a path of the wrong kind (a directory for a file,
a file for a directory, a training run folder for a model, a stage run before its input exists), a
misspelled or abbreviated option (refused, with the nearest option named), a number that is not finite
or out of range, an empty problems file. No network: the hub is an endpoint that refuses connections."""
import json

import pytest
from huggingface_hub import constants

from spot_fast.config import parse_config
from spot_fast.data import DataError, load_pairs
from spot_fast.evaluate.__main__ import main as eval_main
from spot_fast.models import ASSETS, BUILTIN_MODEL, ModelError, load_model, load_tokenizer
from spot_fast.rectify import layout
from spot_fast.rectify.__main__ import main as rectify_main

PROBLEMS = ASSETS / "problems.jsonl"
PAIRS = ASSETS / "pairs.jsonl"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def one_line_error(capsys, prefix):
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1, err
    return err


def exit_message(call):
    """The message of the SystemExit that ``call()`` raises (train's errors)."""
    with pytest.raises(SystemExit) as stopped:
        call()
    return str(stopped.value)


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """The hub at an address that refuses connections, not offline, an empty local cache, no proxy."""
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)


def test_an_unreachable_hub_is_answered_in_one_line_by_every_command(tmp_path, capsys, unreachable_hub):
    said = f"spotfast/absent: the hub ({UNREACHABLE}) cannot be reached"
    fix = "then run with HF_HUB_OFFLINE=1"
    assert eval_main(["--model", "spotfast/absent", "--output-dir", str(tmp_path / "eval")]) == 2
    assert f"--model {said}" in one_line_error(capsys, "spot-fast-eval: error: ")
    assert rectify_main(["elicit", "--workdir", str(tmp_path / "work"), "--problems", str(PROBLEMS),
                         "--model", "spotfast/absent"]) == 2
    assert f"--model {said}" in one_line_error(capsys, "spot-fast-rectify: error: ")
    assert rectify_main(["verify", "--workdir", str(tmp_path / "work"), "--tokenizer", "spotfast/absent"]) == 2
    err = one_line_error(capsys, "spot-fast-rectify: error: ")
    assert f"--tokenizer {said}" in err and fix in err
    message = exit_message(lambda: parse_config(["--model", "spotfast/absent", "--data", str(PAIRS)]))
    assert f"--model {said}" in message and fix in message
    assert not (tmp_path / "eval").exists() and not (tmp_path / "work" / layout.RESULTS).exists()


def test_a_directory_given_for_a_file_is_named_as_such(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert rectify_main(["elicit", "--workdir", str(tmp_path / "work"), "--problems", str(folder)]) == 2
    assert f"{folder}: is a directory, not a file" in one_line_error(capsys, "spot-fast-rectify: error: ")
    assert eval_main(["--model", BUILTIN_MODEL, "--benchmarks", str(folder), "--output-dir", str(tmp_path / "e")]) == 2
    assert f"{folder}: is a directory, not a file" in one_line_error(capsys, "spot-fast-eval: error: ")
    assert exit_message(lambda: parse_config(["--config", str(folder)])) == f"error: --config {folder}: is a directory, not a file"
    with pytest.raises(DataError, match=f"{folder}: is a directory with no dataset in it"):  # --data takes dataset folders
        load_pairs(folder, load_tokenizer(BUILTIN_MODEL), 64)
    with pytest.raises(DataError, match="absent.jsonl: no such file"):
        load_pairs(tmp_path / "absent.jsonl", load_tokenizer(BUILTIN_MODEL), 64)


@pytest.mark.parametrize("below", ["", "sub"], ids=["the file", "a folder under it"])
def test_a_file_given_for_a_directory_is_named_as_such(tmp_path, capsys, below):
    file = tmp_path / "a-file"
    file.write_text("keep me\n")
    target = file / below if below else file
    assert rectify_main(["elicit", "--workdir", str(target), "--problems", str(PROBLEMS)]) == 2
    assert f"--workdir {target}: {file} is a file, not a directory" in one_line_error(capsys, "spot-fast-rectify: error: ")
    assert eval_main(["--model", BUILTIN_MODEL, "--output-dir", str(target), "--limit", "1"]) == 2
    assert f"--output-dir {target}: {file} is a file, not a directory" in one_line_error(capsys, "spot-fast-eval: error: ")
    assert file.read_text() == "keep me\n"


def test_a_training_run_folder_given_as_a_model_points_to_its_final_model(tmp_path, capsys):
    run = tmp_path / "run"
    load_model(BUILTIN_MODEL).save_pretrained(run / "checkpoint-2")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ModelError, match=rf"'{run}' is a training run folder, not a model: use one of its "
                                         rf"checkpoint-<step> folders, or .* --checkpoints {run}$"):
        load_tokenizer(str(run))
    (run / "final").mkdir()
    with pytest.raises(ModelError, match=rf"not a model: use {run / 'final'} \(or one of its checkpoint-<step> folders\)"):
        load_tokenizer(str(run))
    capsys.readouterr()
    assert eval_main(["--model", str(run), "--output-dir", str(tmp_path / "eval"), "--limit", "1"]) == 2
    assert "is a training run folder, not a model" in one_line_error(capsys, "spot-fast-eval: error: ")
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelError, match="has no tokenizer"):  # a model folder without its tokenizer stays that
        load_tokenizer(str(tmp_path / "model"))


def test_a_stage_run_before_its_input_exists_names_the_stage_to_run_first(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    oracle = ["--oracle-callable", "rectify_oracles:slow_fix"]
    for stage, options in (("correct", oracle), ("verify", []), ("build", [])):
        assert rectify_main([stage, "--workdir", str(work), *options]) == 2
        err = one_line_error(capsys, "spot-fast-rectify: error: ")
        assert f"{work} has no " in err and "run `spot-fast-rectify elicit`" in err, err
    assert rectify_main(["correct", "--workdir", str(tmp_path / "new"), *oracle]) == 2  # not even the folder yet
    assert "run `spot-fast-rectify elicit` first" in one_line_error(capsys, "spot-fast-rectify: error: ")
    (work / layout.ERRORS).write_text(json.dumps({"id": "a", "question": "q", "answer": "1", "response": "r"}) + "\n")
    assert rectify_main(["verify", "--workdir", str(work)]) == 2
    assert f"has no {layout.CORRECTIONS}: run `spot-fast-rectify correct` first" in one_line_error(capsys, "spot-fast-rectify")


@pytest.mark.parametrize("command, argv, expected", [
    ("train", ["--max-step", "3"], "spot_fast/train.py: error: unrecognized arguments: --max-step 3 "
                                   "(--max-step: did you mean --max-steps?)"),
    ("rectify", ["elicit", "--workdir", "w", "--problem", "p"], "spot-fast-rectify elicit: error: the following "
                                                                 "arguments are required: --problems (--problem: did you mean --problems?)"),
    ("rectify", ["elicit", "--workdir", "w", "--problems", "p", "--sample", "2"], "spot-fast-rectify elicit: error: "
                                                                                   "unrecognized arguments: --sample 2 (--sample: did you mean --samples?)"),
    ("rectify", ["correct", "--workdir", "w", "--samples", "2"], "spot-fast-rectify correct: error: "
                                                                  "unrecognized arguments: --samples 2; see"),
    ("eval", ["--max-new-token=8"], "spot-fast-eval: error: unrecognized arguments: --max-new-token=8 "
                                    "(--max-new-token: did you mean --max-new-tokens?)"),
])
def test_an_abbreviated_or_misspelled_option_is_refused_in_one_line_with_the_nearest(capsys, command, argv, expected):
    run = {"train": parse_config, "rectify": rectify_main, "eval": eval_main}[command]
    with pytest.raises(SystemExit) as stopped:
        run(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.endswith(" --help\n") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--beta", "inf"], "error: --beta must be a finite number; got inf"),
    (["--learning-rate", "nan"], "error: --learning-rate must be a finite number; got nan"),
    (["--max-length", "100000000000"], "error: --max-length must be in [2, 2**24]; got 100000000000"),
    (["--seed", "-1"], "error: --seed must be in [0, 2**32 - 1]; got -1"),
])
def test_train_refuses_numbers_that_are_not_finite_or_absurd(argv, message):
    assert exit_message(lambda: parse_config(argv)) == message


def test_train_refuses_an_infinite_number_from_yaml(tmp_path):
    (tmp_path / "run.yaml").write_text("beta: .inf\n")
    assert "option beta must be a finite number; got inf" in exit_message(lambda: parse_config(["--config", str(tmp_path / "run.yaml")]))


@pytest.mark.parametrize("command, argv, message", [
    ("eval", ["--temperature", "inf"], "argument --temperature: must be a finite number, got 'inf'"),
    ("eval", ["--top-p", "1.5"], "argument --top-p: must be in (0, 1], got '1.5'"),
    ("eval", ["--seed", "4294967296"], "argument --seed: must be in [0, 2**32 - 1], got '4294967296'"),
    ("rectify", ["verify", "--workdir", "w", "--gamma", "nan"], "argument --gamma: must be a finite number, got 'nan'"),
    ("rectify", ["correct", "--workdir", "w", "--timeout=-inf"], "argument --timeout: must be a finite number"),
    ("rectify", ["elicit", "--workdir", "w", "--problems", "p", "--temperature", "0"], "argument --temperature: must be > 0"),
])
def test_sampling_and_stage_numbers_are_refused_at_option_time(capsys, command, argv, message):
    with pytest.raises(SystemExit) as stopped:
        {"rectify": rectify_main, "eval": eval_main}[command](argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_elicit_refuses_an_empty_problems_file(tmp_path, capsys):
    empty = tmp_path / "problems.jsonl"
    empty.write_text("\n  \n")
    assert rectify_main(["elicit", "--workdir", str(tmp_path / "work"), "--problems", str(empty)]) == 2
    assert f"{empty}: no problems" in one_line_error(capsys, "spot-fast-rectify: error: ")
    assert not (tmp_path / "work" / layout.RESULTS).exists()
