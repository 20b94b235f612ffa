r"""Benchmarks: problems in the pipeline's JSONL format, the prompt of every repetition, and grading.

A benchmark is a JSONL file, named by its stem (``aime24.jsonl`` is "aime24"). Each line holds what
``sampling.problems`` reads, ``question`` (or ``prompt``), ``answer`` (or ``ground_truth``) and an optional ``id``
(default ``line<N>``), and optionally:

- ``choices``: a list of 2 to 26 distinct non-empty strings makes a multiple-choice problem (GPQA
  style); its ``answer`` is the text of the right choice, which must be one of them.
- ``kind``: ``"math"`` (a final answer compared with ``sampling.answers.equivalent``) or ``"choice"``; by default
  ``"choice"`` when ``choices`` is given, else ``"math"``.

A line with ``instruction_id_list`` is an IFEval problem instead (``google/IFEval``'s fields, read and
graded by ``evaluate.ifeval``); a benchmark file is either all IFEval or has none.

Repetition ``k`` of a problem is one request (``sample_request``). A math prompt is the question and
``MATH_INSTRUCTION``; its target is the ground truth. A multiple-choice prompt lists the choices as
``A) ...`` in an order shuffled by a generator seeded with (seed, benchmark, problem id, k), so each
repetition sees its own order and a rerun sees the same one; its target is the letter at which the
right choice landed, and a response is right when the letter in its last box (``choice_letter``) is
that letter. An IFEval prompt is the problem's ``prompt`` as it is; its target is its instruction ids.
"""
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

from spot_fast.evaluate import ifeval
from spot_fast.sampling.answers import grade, last_boxed, normalize
from spot_fast.sampling.problems import problem_fields, read_problems

MATH = "math"
CHOICE = "choice"
IFEVAL = ifeval.IFEVAL
KINDS = (MATH, CHOICE)
LETTERS = string.ascii_uppercase
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Please reason step by step, and put the letter of the correct choice within \\boxed{}."


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: Path
    problems: list

    @property
    def kind(self):
        """``ifeval`` for an IFEval benchmark, else ``answer`` (math and multiple choice)."""
        return IFEVAL if self.problems and self.problems[0]["kind"] == IFEVAL else "answer"


def _benchmark_fields(line):
    """One problem: ``sampling.problems``' fields plus ``kind`` and ``choices`` (None for a math problem), or an
    IFEval problem (``ifeval.problem_fields``)."""
    if "instruction_id_list" in line.record:
        return ifeval.problem_fields(line)
    problem = problem_fields(line)
    choices = line.record.get("choices")
    kind = line.record.get("kind", MATH if choices is None else CHOICE)
    if kind not in KINDS:
        raise line.error(f"field 'kind' must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if kind == MATH:
        if choices is not None:
            raise line.error("a 'math' problem has no 'choices'")
        return {**problem, "kind": kind, "choices": None}
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise line.error(f"field 'choices' must be a list of 2 to {len(LETTERS)} strings")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise line.error("field 'choices' must hold non-empty strings")
    if len(set(choices)) != len(choices):
        raise line.error("field 'choices' has a repeated choice")
    if problem["answer"] not in choices:
        raise line.error(f"answer {problem['answer']!r} is not one of the choices (give the text of the right one)")
    return {**problem, "kind": kind, "choices": choices}


def read_benchmark(path, limit=None):
    """The ``Benchmark`` in the JSONL file ``path`` (its first ``limit`` problems when given); every line
    is checked, and ``InputError`` names the line of a bad one."""
    path = Path(path)
    first = []

    def fields(line):
        problem = _benchmark_fields(line)
        first.append((problem["kind"] == IFEVAL, line.number))
        if first[-1][0] != first[0][0]:
            raise line.error(f"{'an' if first[-1][0] else 'not an'} IFEval problem, but line {first[0][1]} "
                             f"{'is not' if first[-1][0] else 'is'}: a benchmark is all IFEval or has none")
        return problem

    return Benchmark(path.stem, path, read_problems(path, fields)[:limit])


def read_benchmarks(paths, limit=None):
    """The benchmarks in ``paths``, whose names (file stems) must differ."""
    benchmarks = [read_benchmark(p, limit) for p in paths]
    seen = {}
    for benchmark in benchmarks:
        if benchmark.name in seen:
            raise ValueError(f"benchmarks {seen[benchmark.name]} and {benchmark.path} have the same name "
                             f"{benchmark.name!r} (the file stem); rename one")
        seen[benchmark.name] = benchmark.path
    return benchmarks


def shuffled_choices(choices, seed, benchmark, problem_id, repetition):
    """The choices in the order repetition ``repetition`` shows them (a seeded shuffle)."""
    order = list(choices)
    random.Random(f"{seed}/{benchmark}/{problem_id}/{repetition}").shuffle(order)
    return order


def sample_request(benchmark, problem, repetition, seed):
    """The request for repetition ``repetition`` of ``problem``: its id, prompt and target answer."""
    request = {"id": f"{benchmark}/{problem['id']}#{repetition}", "benchmark": benchmark,
               "problem_id": problem["id"], "sample": repetition, "kind": problem["kind"]}
    if problem["kind"] == IFEVAL:
        return {**request, "prompt": problem["prompt"], "target": problem["instruction_id_list"], "problem": problem}
    if problem["kind"] == MATH:
        return {**request, "prompt": f"{problem['question']}\n\n{MATH_INSTRUCTION}", "target": problem["answer"]}
    order = shuffled_choices(problem["choices"], seed, benchmark, problem["id"], repetition)
    listed = "\n".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, order))
    return {**request, "prompt": f"{problem['question']}\n\n{listed}\n\n{CHOICE_INSTRUCTION}",
            "target": LETTERS[order.index(problem["answer"])]}


_LETTER = re.compile(r"\(?([A-Z])\)?")


def choice_letter(answer):
    r"""The letter named by a boxed multiple-choice answer (``B``, ``(B)``, ``\text{B}``), or None."""
    if answer is None:
        return None
    match = _LETTER.fullmatch(normalize(answer))
    return match.group(1) if match else None


def grade_response(kind, response, target):
    """(the last boxed answer of ``response`` or None, whether it is right) for a request's target."""
    if kind == MATH:
        return grade(response, target)
    predicted = last_boxed(response)
    return predicted, choice_letter(predicted) == target
