"""The files of a rectification work directory; each stage reads what the stage before it wrote.

    elicit   problems.jsonl (anywhere) -> results.jsonl (every sample, graded), errors.jsonl (wrong ones),
                                          results.settings.json (the model and sampling settings)
    correct  errors.jsonl              -> corrections.jsonl (one final record per error id),
                                          unmarked_replies.jsonl (Oracle replies without a marked correction)
    verify   corrections.jsonl         -> verified.jsonl (every correction, kept or with a drop reason)
    build    verified.jsonl (+ the rest for counts) -> pairs.jsonl (training data), report.md,
             report.json, change_ratio.png, common_prefix.png
"""
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
