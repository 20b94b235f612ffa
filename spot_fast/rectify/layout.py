"""The files of a rectification work directory; each stage reads what the stage before it wrote.

    elicit   problems.jsonl (anywhere) -> results.jsonl (every sample, graded), errors.jsonl (wrong ones),
                                          results.settings.json (the model and sampling settings)
    correct  errors.jsonl              -> corrections.jsonl (one final record per error id),
                                          unmarked_replies.jsonl (Oracle replies without a marked correction)
    verify   corrections.jsonl         -> verified.jsonl (every correction, kept or with a drop reason)
    build    verified.jsonl (+ the rest for counts) -> pairs.jsonl (training data), report.md,
             report.json, change_ratio.png, common_prefix.png

A stage reads its input through ``stage_input``, so that a missing one (an empty or new work
directory, a stage skipped) is answered with the stage to run first rather than "file not found".
"""
from pathlib import Path

RESULTS = "results.jsonl"
RESULTS_SETTINGS = "results.settings.json"
ERRORS = "errors.jsonl"
CORRECTIONS = "corrections.jsonl"
UNMARKED = "unmarked_replies.jsonl"
VERIFIED = "verified.jsonl"
PAIRS = "pairs.jsonl"
REPORT = "report.md"
REPORT_JSON = "report.json"
HISTOGRAM = "change_ratio.png"
PREFIX_HISTOGRAM = "common_prefix.png"

# the files a stage reads from the work directory, in pipeline order, and the stage that writes each
WRITTEN_BY = {ERRORS: "elicit", CORRECTIONS: "correct", VERIFIED: "verify"}


def stage_input(workdir, name):
    """The path of stage file ``name`` in ``workdir``; ValueError when it is missing, naming the stages
    to run first: from the stage that writes it back to the first stage whose output is also missing (a
    work directory may start from its own errors.jsonl or corrections.jsonl)."""
    path = Path(workdir) / name
    if path.is_file():
        return path
    files = list(WRITTEN_BY)
    first = files.index(name)
    while first > 0 and not (Path(workdir) / files[first - 1]).is_file():
        first -= 1
    stages = ", then ".join(f"`spot-fast-rectify {WRITTEN_BY[f]}`" for f in files[first:files.index(name) + 1])
    raise ValueError(f"{workdir} has no {name}: run {stages} first")
