"""spot-fast-eval: the evaluation loop with known answers, the command end to end on the built-in model
and the bundled benchmark (several models, a run's checkpoints, table, plots), and resumption after
SIGKILL."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest

from spot_fast.evaluate.__main__ import BUNDLED_BENCHMARKS, main
from spot_fast.evaluate.benchmark_files import read_benchmarks
from spot_fast.evaluate.results import models_figure
from spot_fast.evaluate.run import ModelSpec, checkpoint_models, evaluate_model, parse_model
from spot_fast.models import BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.sampling.generation import Generation, HFGenerator
from spot_fast.sampling.settings import Sampling

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TINY_MATH = next(p for p in BUNDLED_BENCHMARKS if p.stem == "tiny_math")


class KnowsTheAnswers:
    """A generator that answers right on even repetitions and wrong on odd ones, reading the right
    answer from the benchmark (math) or finding the right choice's letter in the prompt (choice)."""

    def __init__(self, benchmarks):
        self.truth = {p["question"]: p for b in benchmarks for p in b.problems}
        self.calls = 0

    def answer(self, prompt):
        problem = next(p for question, p in self.truth.items() if prompt.startswith(question + "\n"))
        if problem["kind"] == "math":
            return problem["answer"]
        listed = dict(re.findall(r"^([A-Z])\) (.*)$", prompt, flags=re.MULTILINE))
        return next(letter for letter, text in listed.items() if text == problem["answer"])

    def generate(self, prompts, sample_ids):
        self.calls += 1
        right = self.calls % 2 == 1  # requests come problem by problem, repetition 0 first
        return [Generation(f"So the answer is \\boxed{{{self.answer(p) if right else 'nothing'}}}.", tokens=7,
                           truncated=False) for p in prompts]


def test_evaluation_grades_known_answers_and_reports_hand_computed_metrics(tmp_path):
    benchmarks = read_benchmarks(BUNDLED_BENCHMARKS, limit=5)
    generator = KnowsTheAnswers(benchmarks)
    samples = {b.name: 2 for b in benchmarks}
    metrics = evaluate_model(ModelSpec("scripted", "scripted"), benchmarks, samples, tmp_path,
                             lambda: generator, {"sampling": "fixed"}, batch_size=1, seed=3)
    for name in ("tiny_math", "tiny_choice"):
        m = metrics[name]
        # repetition 0 all right, repetition 1 all wrong: runs 1 and 0
        assert m["runs"] == [1.0, 0.0] and m["avg"] == 0.5 and m["std"] == 0.5
        assert m["pass_at"] == {"1": 0.5, "2": 1.0}
        assert (m["problems"], m["samples"], m["mean_tokens"], m["truncation_rate"]) == (5, 2, 7, 0)
    assert generator.calls == 20


def test_a_start_that_fails_before_its_first_sample_claims_nothing(tmp_path):
    """A run that fails before drawing (here: a backend that is not installed) leaves no settings that
    refuse the corrected rerun; once that rerun has drawn samples, its settings are the ones kept."""
    benchmarks = read_benchmarks(BUNDLED_BENCHMARKS, limit=1)
    samples = {b.name: 1 for b in benchmarks}
    model = ModelSpec("m", "m")

    def missing_backend():
        raise RuntimeError("backend 'vllm' needs vLLM installed")

    with pytest.raises(RuntimeError, match="needs vLLM"):
        evaluate_model(model, benchmarks, samples, tmp_path, missing_backend, {"backend": "vllm"})
    generator = KnowsTheAnswers(benchmarks)
    metrics = evaluate_model(model, benchmarks, samples, tmp_path, lambda: generator, {"backend": "hf"})
    assert [m["samples"] for m in metrics.values()] == [1, 1]
    with pytest.raises(ValueError, match=r"other settings \(backend: 'hf' then, 'vllm' now\)"):
        evaluate_model(model, benchmarks, samples, tmp_path, missing_backend, {"backend": "vllm"})


def test_a_generation_ends_at_its_first_end_token():
    generator = HFGenerator(BUILTIN_MODEL, Sampling(max_new_tokens=8), {})
    end, pad = min(generator.eos_ids), generator.tokenizer.pad_token_id
    words = generator.tokenizer("so 42", add_special_tokens=False)["input_ids"]
    finished = generator._generation(words + [end] + [pad] * (7 - len(words)))
    assert finished == Generation("so 42", tokens=len(words) + 1, truncated=False)
    assert generator._generation(words) == Generation("so 42", tokens=len(words), truncated=True)


def test_model_labels_and_checkpoints(tmp_path):
    assert parse_model("base=/x/y", BUILTIN_MODEL) == ModelSpec("base", "/x/y")
    assert parse_model("/runs/a/final/", BUILTIN_MODEL) == ModelSpec("final", "/runs/a/final/")
    assert parse_model("Qwen/Qwen3-8B", BUILTIN_MODEL).label == "Qwen3-8B"
    assert parse_model(BUILTIN_MODEL, BUILTIN_MODEL).label == "builtin-tiny-qwen3"
    with pytest.raises(ValueError, match="label 'a b' may hold only"):
        parse_model("a b=/x", BUILTIN_MODEL)
    for name in ("checkpoint-10", "checkpoint-2", "final", "checkpoint-x", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "final" / "trainer_state.json").write_text(json.dumps({"step": 12}))
    assert [(m.label, m.step) for m in checkpoint_models(tmp_path)] == [
        ("checkpoint-2", 2), ("checkpoint-10", 10), ("final", 12)]
    with pytest.raises(ValueError, match="no checkpoint-<step> or final"):
        checkpoint_models(tmp_path / "notes")


def save_builtin_model(path):
    """The built-in model saved as a Hugging Face model directory."""
    load_model(BUILTIN_MODEL).save_pretrained(path)
    load_tokenizer(BUILTIN_MODEL).save_pretrained(path)
    return path


def eval_arguments(output_dir, *options):
    return ["--output-dir", str(output_dir), "--max-new-tokens", "16", *options]


def eval_command(output_dir, *options):
    """The command line of ``eval_arguments``, run as ``python -m spot_fast.evaluate``."""
    return [sys.executable, "-m", "spot_fast.evaluate", *eval_arguments(output_dir, *options)]


def read_samples(output_dir, label):
    return [json.loads(line) for line in (output_dir / "samples" / f"{label}.jsonl").read_text().splitlines()]


def test_command_end_to_end_on_models_and_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    for name, step in (("checkpoint-1", 1), ("final", 4)):
        save_builtin_model(run / name)
        (run / name / "trainer_state.json").write_text(json.dumps({"step": step}))
    out = tmp_path / "eval"
    options = ["--model", f"base={BUILTIN_MODEL}", "--checkpoints", str(run), "--samples", "3", "tiny_math=2",
               "--limit", "2"]
    done = subprocess.run(eval_command(out, *options), cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    results = json.loads((out / "results.json").read_text())
    labels = ["base", "checkpoint-1", "final"]
    assert [(m["label"], m["step"]) for m in results["models"]] == list(zip(labels, [None, 1, 4]))
    for model in results["models"]:
        records = read_samples(out, model["label"])
        assert len(records) == len({r["id"] for r in records}) == 2 * 2 + 2 * 3
        assert all(0 < r["tokens"] <= 16 and (not r["truncated"] or r["tokens"] == 16) for r in records)
        for name, k in (("tiny_math", 2), ("tiny_choice", 3)):
            metrics, graded = model["benchmarks"][name], [r for r in records if r["benchmark"] == name]
            assert (metrics["problems"], metrics["samples"]) == (2, k)
            assert metrics["avg"] == pytest.approx(sum(r["correct"] for r in graded) / len(graded))
            assert metrics["mean_tokens"] == pytest.approx(sum(r["tokens"] for r in graded) / len(graded))
            assert metrics["truncation_rate"] == pytest.approx(sum(r["truncated"] for r in graded) / len(graded))
    # the same weights, seed and prompts give the same samples, whether built in or loaded from a directory
    responses = [r["response"] for r in read_samples(out, "base")]
    assert [r["response"] for r in read_samples(out, "checkpoint-1")] == responses

    table = (out / "results.md").read_text()
    for label in labels:
        assert re.search(rf"^\| {label} \|", table, flags=re.MULTILINE)
    assert "tiny_choice avg@3" in table and "tiny_math avg@2" in table and table in done.stdout
    for png in ("accuracy.png", "accuracy_by_step.png"):
        height, width, _ = matplotlib.image.imread(out / png).shape
        assert height > 100 and width > 100

    log_before = (out / "samples" / "base.jsonl").read_bytes()
    assert main(eval_arguments(out, *options)) == 0
    assert json.loads((out / "results.json").read_text()) == results
    assert (out / "samples" / "base.jsonl").read_bytes() == log_before

    capsys.readouterr()
    assert main(eval_arguments(out, *options, "--temperature", "1.0")) == 2
    error = capsys.readouterr().err
    assert "base.jsonl holds samples drawn with other settings (sampling:" in error
    assert "'temperature': 0.7" in error and "'temperature': 1.0" in error


def test_bad_benchmark_line_stops_before_any_model_loads(tmp_path, capsys):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n')
    assert main(eval_arguments(tmp_path / "eval", "--model", "/no/such/model", "--benchmarks", str(bench))) == 2
    assert f"{bench}:2: missing field 'answer' or 'ground_truth'" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_nothing_to_evaluate_is_an_error(tmp_path, capsys):
    assert main(eval_arguments(tmp_path)) == 2
    assert "nothing to evaluate: give --model" in capsys.readouterr().err


def complete_lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_mid_run_then_rerun_gives_every_sample_once(tmp_path):
    out = tmp_path / "eval"
    options = ["--model", BUILTIN_MODEL, "--benchmarks", str(TINY_MATH), "--samples", "4", "--limit", "5"]
    log = out / "samples" / "builtin-tiny-qwen3.jsonl"
    total = 5 * 4
    process = subprocess.Popen(eval_command(out, *options, "--batch-size", "1"), cwd=tmp_path, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while complete_lines(log) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    before = log.read_bytes()
    written = before[:before.rfind(b"\n") + 1]
    assert 3 <= written.count(b"\n") < total

    assert main(eval_arguments(out, *options, "--batch-size", "8")) == 0  # the rerun: batches may differ
    after = log.read_bytes()
    assert after.startswith(written) and after.endswith(b"\n")
    ids = [json.loads(line)["id"] for line in after.splitlines()]
    expected = {f"tiny_math/math-{i:02d}#{k}" for i in range(1, 6) for k in range(4)}
    assert len(ids) == len(set(ids)) == total and set(ids) == expected
    metrics = json.loads((out / "results.json").read_text())["models"][0]["benchmarks"]["tiny_math"]
    assert (metrics["problems"], metrics["samples"]) == (5, 4)


def test_accuracy_bars_are_labelled_with_their_values_even_at_zero():
    def model(label, avg):
        return {"label": label, "model": label, "step": None,
                "benchmarks": {name: {"avg": avg, "std": 0.0} for name in ("tiny_math", "tiny_choice")}}

    figure = models_figure({"models": [model("base", 0.0), model("final", 0.25)]})
    [axes] = figure.axes
    labels = sorted(text.get_text() for text in axes.texts)
    assert labels == ["0.0", "0.0", "25.0", "25.0"]
    assert axes.get_ylim()[1] > 100  # room for a label over a full bar
