"""Which models to evaluate, and the resumable evaluation of one model on the benchmarks.

Models: ``--model [LABEL=]PATH`` (a model directory, a hub id, or the built-in model; the label
defaults to the last path component), and ``--checkpoints RUN_DIR``: every ``checkpoint-<step>`` of a
training run and its ``final``, at the step their ``trainer_state.json`` records. Labels name files, so
they are unique and made of letters, digits, ``.``, ``_`` and ``-``.

Files under the output directory, per model:

    samples/<label>.jsonl          every graded sample (an ``AppendLog``: fsynced line by line)
    samples/<label>.settings.json  the model and sampling settings those samples were drawn with

Evaluating a model asks for every (benchmark, problem, repetition) and samples only those missing
from its log (``sampling.generation.sample_missing``), so an interrupted run resumes where it stopped, and a
rerun writes each sample once. Samples drawn with other settings are never mixed in (``sampling.settings.claim``): a rerun whose
settings differ from those of the samples already drawn is refused, naming what differs.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

from spot_fast.checkpoint import STATE_FILE, checkpoints
from spot_fast.evaluate import ifeval
from spot_fast.evaluate.benchmark_files import IFEVAL, grade_response, sample_request
from spot_fast.evaluate.scores import summarize
from spot_fast.jsonl import AppendLog
from spot_fast.sampling.generation import sample_missing
from spot_fast.sampling.settings import claim

BUILTIN_LABEL = "builtin-tiny-qwen3"
_LABEL = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelSpec:
    label: str
    path: str
    step: int | None = None


def parse_model(text, builtin_model):
    """``[LABEL=]PATH`` -> ``ModelSpec``; without a label, the last component of PATH."""
    label, sep, path = text.partition("=")
    if not sep:
        label, path = None, text
    if not path:
        raise ValueError(f"--model {text!r}: no model path")
    if label is None:
        label = BUILTIN_LABEL if path == builtin_model else Path(path.rstrip("/")).name
    if not _LABEL.fullmatch(label):
        raise ValueError(f"--model {text!r}: label {label!r} may hold only letters, digits, '.', '_' and '-'"
                         " (give one as LABEL=PATH)")
    return ModelSpec(label, path)


def checkpoint_models(run_dir):
    """A ``ModelSpec`` for each ``checkpoint-<step>`` of ``run_dir`` (by step) and for its ``final``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"--checkpoints {run_dir}: no such directory")
    found = [ModelSpec(p.name, str(p), int(p.name.split("-")[-1])) for p in checkpoints(run_dir)]
    final = run_dir / "final"
    if final.is_dir():
        state = final / STATE_FILE
        step = json.loads(state.read_text())["step"] if state.is_file() else None
        found.append(ModelSpec("final", str(final), step))
    if not found:
        raise ValueError(f"--checkpoints {run_dir}: no checkpoint-<step> or final directory in it")
    return found


def check_unique_labels(models):
    seen = {}
    for model in models:
        if model.label in seen:
            raise ValueError(f"models {seen[model.label]} and {model.path} have the same label {model.label!r};"
                             " name them with --model LABEL=PATH")
        seen[model.label] = model.path


def evaluate_model(model, benchmarks, samples, output_dir, load_generator, settings, batch_size=8, seed=0):
    """Sample what is missing and return ``{benchmark name: metrics}`` for ``model`` (a ``ModelSpec``).

    ``samples``: ``{benchmark name: k}``. ``settings``: a JSON-able dict of everything that determines
    the samples besides the model (sampling, prompt rendering, backend, dtype); ``seed`` also orders
    multiple-choice options. ``load_generator()`` is called only when a sample is missing.
    """
    folder = Path(output_dir) / "samples"
    samples_path = folder / f"{model.label}.jsonl"
    claim(folder / f"{model.label}.settings.json", {"model": model.path, **settings}, samples_path, "--output-dir")
    requests = [sample_request(benchmark.name, problem, k, seed)
                for benchmark in benchmarks for problem in benchmark.problems for k in range(samples[benchmark.name])]

    def record(request, generation):
        grades = {}
        if request["kind"] == IFEVAL:
            strict, loose = ifeval.grade(request["problem"], generation.text)
            predicted, correct, grades = None, all(strict), {"strict": strict, "loose": loose}
        else:
            predicted, correct = grade_response(request["kind"], generation.text, request["target"])
        return {key: request[key] for key in ("id", "benchmark", "problem_id", "sample", "target")} | {
            "response": generation.text, "predicted": predicted, "correct": correct, **grades,
            "tokens": generation.tokens, "truncated": generation.truncated}

    with AppendLog(samples_path) as log:
        sample_missing(log, requests, load_generator, record, batch_size, desc=f"eval {model.label}")
        graded = [log.records[request["id"]] for request in requests]
    return {benchmark.name: (ifeval.summarize if benchmark.kind == IFEVAL else summarize)(
        [r for r in graded if r["benchmark"] == benchmark.name], samples[benchmark.name]) for benchmark in benchmarks}
