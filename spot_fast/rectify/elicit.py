"""Stage 1, elicit: sample the student model's answers to problems with known answers, keep the wrong.

Input: JSONL with ``question`` (or ``prompt``), ``answer`` (or ``ground_truth``; a string or a
number) and an optional ``id`` (default ``line<N>``). Each problem gets ``samples`` answers with ids
``<problem id>#<k>``, graded by ``answers.grade``.

Output (in the work directory): ``results.jsonl``, one record per sample (with the ``model`` that drew
it), appended batch by batch through an ``AppendLog``: a rerun generates only the samples not yet
written. SPoT's errors must all come from one model: ``results.settings.json`` records the model and
sampling settings of the samples, and a rerun with another model or other settings is refused
(``sample_settings.claim``). At the end ``errors.jsonl`` is rewritten from it with the wrong samples.
"""
from pathlib import Path

from spot_fast.rectify import layout
from spot_fast.rectify.answers import grade
from spot_fast.rectify.generation import sample_missing
from spot_fast.rectify.jsonl import AppendLog, InputError, read_unique, write_jsonl_atomic
from spot_fast.rectify.sample_settings import claim


def problem_fields(line):
    """The id, question and answer of one problems line (a ``jsonl.Line``)."""
    return {"id": line.record_id(default=f"line{line.number}"),
            "question": line.text("question", "prompt"),
            "answer": line.text("answer", "ground_truth", numbers=True)}


def read_problems(path, fields=problem_fields):
    """The problems of the JSONL file ``path`` (``fields(line)`` each, ids unique); a file without any
    is refused, as the trainer refuses one without pairs: there would be nothing to sample."""
    problems = read_unique(path, fields)
    if not problems:
        raise InputError(path, 0, "no problems (the file holds no non-blank line)")
    return problems


def elicit(problems_path, workdir, load_generator, settings, samples=1, batch_size=8, limit=None):
    """Sample, grade and write results; returns the stage summary.

    ``load_generator()`` returns the generator (``generation``); it is called only when some sample is
    still missing, after the problems file has been checked, so bad input fails before a model loads.
    ``settings``: a JSON-able dict of the ``model`` and everything else that determines the samples
    (``sampling_options.recorded_settings``).
    """
    problems = read_problems(problems_path)[:limit]
    workdir = Path(workdir)
    claim(workdir / layout.RESULTS_SETTINGS, settings, workdir / layout.RESULTS, "--workdir")
    requests = [{"id": f"{problem['id']}#{k}", "prompt": problem["question"], "problem": problem, "sample": k}
                for problem in problems for k in range(samples)]

    def record(request, generation):
        problem = request["problem"]
        predicted, correct = grade(generation.text, problem["answer"])
        return {"id": request["id"], "problem_id": problem["id"], "sample": request["sample"], "model": settings["model"],
                "question": problem["question"], "answer": problem["answer"], "response": generation.text,
                "predicted": predicted, "correct": correct, "truncated": generation.truncated}

    with AppendLog(workdir / layout.RESULTS) as results:
        generated = sample_missing(results, requests, load_generator, record, batch_size, desc="elicit")
        records = list(results.records.values())
    write_jsonl_atomic(workdir / layout.ERRORS, [r for r in records if not r["correct"]])
    return {"samples generated now": generated, **counts(records)}


def counts(results):
    """What the graded samples ``results`` hold (for the stage summary and the report)."""
    wrong = [r for r in results if not r["correct"]]
    return {"problems": len({r["problem_id"] for r in results}), "samples": len(results),
            "correct": len(results) - len(wrong), "wrong": len(wrong),
            "wrong without a boxed answer": sum(r["predicted"] is None for r in wrong),
            "wrong and cut at the token limit": sum(r["truncated"] for r in wrong)}
