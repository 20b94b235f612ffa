"""Checkpoints under interruption: a save that raises or is SIGKILLed part-way never leaves a
checkpoint that ``--resume latest`` trusts; resuming from the last complete one reproduces the
uninterrupted run (metrics and final weights); ``keep_last`` keeps the newest checkpoints; ``final/``
is a model directory without the optimizer state; ``--resume latest`` after a finished run says so and
changes nothing; Ctrl-C or SIGTERM ends a run with one line that says how to resume it."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spot_fast.batching import pair_tokens
from spot_fast.checkpoint import checkpoints, has_engine_state, prune_checkpoints
from spot_fast.config import DEMO_LEARNING_RATE, TrainConfig
from spot_fast.data import load_pairs
from spot_fast.example_order import ExampleOrder
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "spot_fast" / "train.py")]
INTERRUPTED = [sys.executable, str(REPO / "tests" / "helpers" / "interrupt_save.py")]
ARGS = ["--max-steps", "4", "--grad-accum", "2", "--per-device-batch", "2", "--log-every", "1", "--learning-rate", "1e-3",
        "--save-every", "1", "--keep-last", "2", "--loss", "dpo"]


def run(command, expect_success=True):
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert (result.returncode == 0) == expect_success, f"{command}: exit {result.returncode}\n{result.stderr[-4000:]}"
    return result


def rows(output_dir):
    return [json.loads(line) for line in open(output_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    run(TRAIN + ARGS + ["--cache-dir", str(root / "cache"), "--output-dir", str(root / "run")])
    return root


def test_keep_last_keeps_the_newest_checkpoints(uninterrupted):
    assert [p.name for p in checkpoints(uninterrupted / "run")] == ["checkpoint-2", "checkpoint-3"]
    assert not list((uninterrupted / "run").glob(".*"))  # no temporary or half-deleted directory left


@pytest.mark.parametrize("point, how", [("save_pretrained", "raise"), ("fsync", "kill")])
def test_an_interrupted_save_is_never_resumed_from(uninterrupted, point, how):
    root = uninterrupted
    output_dir = root / f"{point}-{how}"
    run(INTERRUPTED + ["checkpoint-3", point, how] + ARGS + ["--cache-dir", str(root / "cache"),
                                                             "--output-dir", str(output_dir)], expect_success=False)
    assert [p.name for p in checkpoints(output_dir)] == ["checkpoint-1", "checkpoint-2"]
    assert not (output_dir / "final").exists()

    resumed = run(TRAIN + ARGS + ["--cache-dir", str(root / "cache"), "--output-dir", str(output_dir), "--resume", "latest"])
    assert f"resumed from {output_dir / 'checkpoint-2'} at step 2" in resumed.stdout
    expected, got = rows(root / "run"), rows(output_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4]  # the steps after the checkpoint are logged once
    for mine, theirs in zip(got, expected):
        for key in ("loss", "rewards/margin", "grad_norm", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), (mine["step"], key)
    weights, reference = load_file(output_dir / "final" / "model.safetensors"), load_file(root / "run" / "final" / "model.safetensors")
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6)
    assert [p.name for p in checkpoints(output_dir)] == ["checkpoint-2", "checkpoint-3"]


# a Hugging Face model directory: weights, configuration, tokenizer, and the run's training state summary
MODEL_DIRECTORY_FILE = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|(generation_)?config\.json|"
                                  r"tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json|"
                                  r"merges\.txt|chat_template\.jinja|trainer_state\.json")


def test_final_holds_the_model_and_no_optimizer_state(uninterrupted):
    """The optimizer state is ~12 bytes per parameter (~100 GB at 8B): it stays in checkpoint-<step>/,
    where an interrupted run resumes from, and final/ holds the files of a model directory alone."""
    run_dir = uninterrupted / "run"
    found = sorted(str(path.relative_to(run_dir / "final")) for path in (run_dir / "final").rglob("*"))
    assert "model.safetensors" in found and "trainer_state.json" in found
    assert [name for name in found if not MODEL_DIRECTORY_FILE.fullmatch(name)] == [], f"final/ holds {found}"
    assert all(has_engine_state(path) for path in checkpoints(run_dir))


def files_and_times(directory):
    return {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in Path(directory).rglob("*")}


def test_resume_latest_after_a_finished_run_says_so_and_changes_nothing(uninterrupted, capsys):
    """The run's latest state is final/ (step 4, after checkpoint-3): nothing left to train, said in one
    line naming the folder, before any work; a larger --max-steps would need the optimizer state that
    final/ does not keep, and is refused naming it."""
    from spot_fast.train import main
    run_dir = uninterrupted / "run"
    before = files_and_times(run_dir)
    argv = ARGS + ["--cache-dir", str(uninterrupted / "cache"), "--output-dir", str(run_dir), "--resume", "latest"]
    assert main(argv) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said == (f"{run_dir}: the run finished at step 4 of 4; nothing left to train, {run_dir / 'final'} is left "
                    f"as it is"), said
    assert main(argv + ["--max-steps", "6"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and (f"{run_dir / 'final'} holds the model at step 4 but no optimizer state (saved "
                                       f"without --save-optimizer-in-final), so this run of 6 steps") in error, error
    assert files_and_times(run_dir) == before


def test_pruning_deletes_the_oldest_and_finishes_an_interrupted_deletion(tmp_path):
    for step in (1, 2, 10, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / ".deleting-checkpoint-0").mkdir()  # a deletion a crash interrupted
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-3"]
    prune_checkpoints(tmp_path, keep_last=0)  # 0 keeps all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-3"]


def test_a_resume_with_a_changed_setting_is_refused_before_any_work(uninterrupted, capsys):
    """A real checkpoint's stored settings (test_guard_rails.py tries every option on a written one)."""
    from spot_fast.train import main
    argv = ARGS + ["--cache-dir", str(uninterrupted / "cache"), "--output-dir", str(uninterrupted / "run"),
                   "--resume", "latest", "--learning-rate", "2e-3", "--beta", "0.2"]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "learning_rate: 0.001 in the checkpoint, 0.002 now" in error and f"{uninterrupted / 'run' / 'final'} was trained with other settings" in error
    assert "beta: 0.1 in the checkpoint, 0.2 now" in error


BUDGET = 360  # tokens per micro-batch: groups of 3 and 1 pairs at every step of ARGS on the bundled pairs


def test_token_budget_micro_batches_train_the_same_steps(uninterrupted):
    """The same 4 pairs per step regrouped by a token budget into micro-batches of unequal sizes (3 + 1
    pairs instead of two fixed 2 + 2): each micro-batch's loss is weighted by its share of the step's
    pairs, so every step's loss, rewards and gradient norm are those of the fixed grouping (dpo: no
    per-micro-batch state). Equal groups would hide a weighting of 1 / (number of micro-batches)."""
    pairs = load_pairs(ASSETS / "pairs.jsonl", load_tokenizer(BUILTIN_MODEL), 8192)[0]
    defaults = TrainConfig()
    order = ExampleOrder(len(pairs), per_device_batch=2, grad_accum=2, world=1, epochs=defaults.epochs,
                         seed=defaults.seed, max_steps=4)
    tokens = [pair_tokens(p, share_prefix=True) for p in pairs]
    plans = [[len(group) for group in order.micro_batches(step, 0, tokens.__getitem__, BUDGET)] for step in range(4)]
    assert all(len(set(sizes)) > 1 for sizes in plans), f"the budget no longer forms unequal groups: {plans}"
    output_dir = uninterrupted / "budget"
    run(TRAIN + ARGS + ["--max-tokens-per-batch", str(BUDGET), "--cache-dir", str(uninterrupted / "cache"),
                        "--output-dir", str(output_dir)])
    for mine, theirs, sizes in zip(rows(output_dir), rows(uninterrupted / "run"), plans, strict=True):
        for key in ("loss", "rewards/chosen", "rewards/margin", "grad_norm"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (
                f"step {mine['step']} {key}: micro-batches of {sizes} pairs must weigh their losses by their "
                f"shares of the step's pairs, as fixed groups of 2 + 2 do")


def signal_when(command, ready, signum, log):
    """Runs ``command`` (stdout and stderr to the file ``log``); once ``ready()`` holds, sends it
    ``signum``. Returns its exit status and its output."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 600
        while not ready():
            assert process.poll() is None and time.monotonic() < deadline, Path(log).read_text()[-4000:]
            time.sleep(0.1)
        process.send_signal(signum)
        process.wait(timeout=300)
    return process.returncode, Path(log).read_text()


def last_step(output_dir):
    found = checkpoints(output_dir)
    return int(found[-1].name.split("-")[-1]) if found else 0


def test_a_signal_ends_the_run_with_one_line_that_says_how_to_resume(tmp_path):
    """SIGTERM (what a scheduler sends) once checkpoint-2 is written, then the command the run printed,
    stopped with Ctrl-C (SIGINT) at the next checkpoint: each ends with exit status 128 + signal and one
    line, no traceback, naming the step reached, the last checkpoint and the resume command. The run
    trains (and its checkpoint stores) the built-in model's default rate."""
    output_dir = tmp_path / "run"
    args = ["--per-device-batch", "2", "--grad-accum", "1", "--save-every", "2", "--keep-last", "0", "--max-steps", "200",
            "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(output_dir)]
    command = TRAIN + args
    for signum, checkpoint_step in ((signal.SIGTERM, 2), (signal.SIGINT, None)):
        checkpoint_step = checkpoint_step or last_step(output_dir) + 2
        status, output = signal_when(command, lambda: last_step(output_dir) >= checkpoint_step, signum,
                                     tmp_path / f"{signum.name}.log")
        assert status == 128 + signum and "Traceback" not in output, output[-4000:]
        assert output.count("interrupted") == 1
        message = output.strip().splitlines()[-1]
        match = re.fullmatch(r"interrupted at step (\d+); last checkpoint (\S+); continue with: (.+)", message)
        assert match, message
        assert int(match[1]) >= checkpoint_step and match[2] == str(checkpoints(output_dir)[-1])
        python = os.path.relpath(sys.executable, REPO)  # the python the run was started with, as the README writes it
        python = sys.executable if python.startswith("..") else python
        assert match[3] == shlex.join([python, "spot_fast/train.py", *args, "--resume", "latest"])
        command = [sys.executable] + shlex.split(match[3])[1:]
    assert "resumed from" in output
    state = json.loads((checkpoints(output_dir)[-1] / "trainer_state.json").read_text())
    assert state["config"]["learning_rate"] == DEMO_LEARNING_RATE


def test_a_signal_in_the_training_loop_waits_for_the_step_and_a_second_ctrl_c_does_not():
    """Inside the loop (``signals_wait_for_the_step``) the first SIGTERM or SIGINT is kept until the
    step under way ends (``stop_if_signalled``), so it never lands inside half-done work; a second
    Ctrl-C raises where it arrives; outside the loop a signal raises at once."""
    from spot_fast.train import Terminated, signals_stop_the_run, signals_wait_for_the_step, stop_if_signalled

    for first, raised in ((signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)):
        with signals_stop_the_run():
            with pytest.raises(raised):
                with signals_wait_for_the_step():
                    os.kill(os.getpid(), first)
                    halfway = "the step goes on"  # the signal did not raise here
                    stop_if_signalled()
            assert halfway == "the step goes on"
    with signals_stop_the_run():
        with pytest.raises(KeyboardInterrupt):
            with signals_wait_for_the_step():
                os.kill(os.getpid(), signal.SIGINT)
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C: at once
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # outside the loop: at once
