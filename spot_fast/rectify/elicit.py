"""Stage 1, elicit: sample the student model's answers to problems with known answers, keep the wrong.

Input: a problems file (``sampling.problems``: ``question`` or ``prompt``, ``answer`` or
``ground_truth``, an optional ``id``). Each problem gets ``samples`` answers with ids
``<problem id>#<k>``, graded by ``sampling.answers.grade``.

Output (in the work directory): ``results.jsonl``, one record per sample (with the ``model`` that drew
it), appended batch by batch through an ``AppendLog``: a rerun generates only the samples not yet
written. SPoT's errors must all come from one model: ``results.settings.json`` records the model and
sampling settings of the samples, and a rerun with another model or other settings is refused
(``sampling.settings.claim``). At the end ``errors.jsonl`` is rewritten from it with the wrong samples.
"""
from pathlib import Path

from spot_fast.jsonl import AppendLog, write_jsonl_atomic
from spot_fast.rectify import layout
from spot_fast.sampling.answers import grade
from spot_fast.sampling.generation import sample_missing
from spot_fast.sampling.problems import read_problems
from spot_fast.sampling.settings import claim


def elicit(problems_path, workdir, load_generator, settings, samples=1, batch_size=8, limit=None):
    """Sample, grade and write results; returns the stage summary.

    ``load_generator()`` returns the generator (``sampling.generation``); it is called only when some sample is
    still missing, after the problems file has been checked, so bad input fails before a model loads.
    ``settings``: a JSON-able dict of the ``model`` and everything else that determines the samples
    (``sampling.settings.recorded_settings``).
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
