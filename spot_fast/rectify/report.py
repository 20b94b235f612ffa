"""The rectification report: counts at every stage, the change-ratio histogram, the common-prefix
histogram (what the trainer's pair trees will save), marked examples.

``stage_counts`` reads whichever stage files exist in the work directory (a run may start from its
own ``errors.jsonl``), so every drop between problems and pairs is accounted for: wrong samples that
were never corrected, corrections the Oracle declined, and each verification drop reason.

``marked_diff`` shows an edit at token level in the style of ``git diff --word-diff``: text only in
y- as ``[-...-]``, text only in y+ as ``{+...+}``, from the LCS alignment of the token ids (the same
one the change ratio counts), each span decoded by the tokenizer.
"""
import io
import json
from itertools import groupby
from statistics import mean, median

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import MaxNLocator  # noqa: E402

from spot_fast.batching import common_prefix_length  # noqa: E402
from spot_fast.crash_safe import write_file  # noqa: E402
from spot_fast.jsonl import read_jsonl  # noqa: E402
from spot_fast.rectify import correct, elicit, layout, verify  # noqa: E402
from spot_fast.rectify.lcs import diff_spans  # noqa: E402


def _records(path):
    return [line.record for line in read_jsonl(path)] if path.is_file() else None


def stage_counts(workdir, verified, pairs):
    """{stage: {what: count}} for the stages whose files exist."""
    counts = {}
    results = _records(workdir / layout.RESULTS)
    if results is not None:
        counts["elicit"] = elicit.counts(results)
    errors, corrections = _records(workdir / layout.ERRORS), _records(workdir / layout.CORRECTIONS)
    if errors is not None and corrections is not None:
        counts["correct"] = correct.counts(errors, {r["id"]: r for r in corrections})
    counts["verify"] = verify.counts(verified)
    counts["build"] = {"pairs": len(pairs)}
    return counts


def _save_png(figure, path):
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    write_file(path, png.getvalue())


def histogram_figure(verified):
    """Stacked histogram of the change ratio of every correction that has one, with a vertical line at
    the ``gamma`` verify judged them with (the records carry it): bars right of it are dropped."""
    groups = {
        "kept": [r["change_ratio"] for r in verified if r["kept"]],
        f"dropped: {verify.TOO_CHANGED}": [r["change_ratio"] for r in verified
                                           if r["drop_reason"] == verify.TOO_CHANGED],
        "dropped: other reasons": [r["change_ratio"] for r in verified
                                   if r["change_ratio"] is not None and not r["kept"]
                                   and r["drop_reason"] != verify.TOO_CHANGED],
    }
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(list(groups.values()), bins=[i / 20 for i in range(21)], stacked=True, label=list(groups))
    for gamma in sorted({r["gamma"] for r in verified if r.get("gamma") is not None}):
        axes.axvline(gamma, color="black", linestyle="--", label=f"gamma = {gamma:g} (largest kept)")
    axes.set_xlabel("change ratio R = 1 - |LCS(y-, y+)| / |y+|")
    axes.set_ylabel("corrections")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()
    figure.tight_layout()
    return figure


def histogram_png(path, verified):
    _save_png(histogram_figure(verified), path)


def common_prefixes(pairs, tokenizer):
    """Per kept pair, (common prefix tokens of y- and y+, |y-|, |y+|) as the trainer's tokenizer splits them."""
    out = []
    for pair in pairs:
        rejected = tokenizer(pair["original_answer"], add_special_tokens=False)["input_ids"]
        chosen = tokenizer(pair["gemini_corrected_answer"], add_special_tokens=False)["input_ids"]
        out.append((common_prefix_length(rejected, chosen), len(rejected), len(chosen)))
    return out


def prefix_histogram_png(path, prefixes):
    """Histogram of the common-prefix fraction |common prefix| / |y+| of the kept pairs."""
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist([shared / max(1, chosen) for shared, _, chosen in prefixes], bins=[i / 20 for i in range(21)])
    axes.set_xlabel("common-prefix fraction |common prefix(y-, y+)| / |y+| (forwarded once in training)")
    axes.set_ylabel("kept pairs")
    figure.tight_layout()
    _save_png(figure, path)


def marked_diff(tokenizer, rejected, chosen):
    """``rejected`` -> ``chosen`` with deleted text as ``[-...-]`` and inserted text as ``{+...+}``.

    Consecutive changed spans are merged, so a replacement reads ``[-old-]{+new+}``.
    """
    a = tokenizer(rejected, add_special_tokens=False)["input_ids"]
    b = tokenizer(chosen, add_special_tokens=False)["input_ids"]
    parts = []
    for same, run in groupby(diff_spans(a, b), key=lambda span: span[0] == "equal"):
        run = list(run)
        a0, b0, a1, b1 = run[0][1], run[0][3], run[-1][2], run[-1][4]
        if same:
            parts.append(tokenizer.decode(b[b0:b1]))
            continue
        if a1 > a0:
            parts.append(f"[-{tokenizer.decode(a[a0:a1])}-]")
        if b1 > b0:
            parts.append(f"{{+{tokenizer.decode(b[b0:b1])}+}}")
    return "".join(parts)


def spread_examples(pairs, count):
    """Up to ``count`` pairs spread evenly over the range of change ratios, lowest to highest."""
    ranked = sorted(pairs, key=lambda p: p["change_ratio"])
    if len(ranked) <= count:
        return ranked
    picks = sorted({round(i * (len(ranked) - 1) / max(1, count - 1)) for i in range(count)})
    return [ranked[i] for i in picks]


def write_report(workdir, verified, pairs, tokenizer, examples=3):
    """Write ``report.md``, ``report.json`` and ``change_ratio.png`` into ``workdir``."""
    counts = stage_counts(workdir, verified, pairs)
    ratios = [p["change_ratio"] for p in pairs]
    ratio_stats = {"mean": mean(ratios), "median": median(ratios), "max": max(ratios)} if ratios else {}
    histogram_png(workdir / layout.HISTOGRAM, verified)
    prefixes = common_prefixes(pairs, tokenizer)
    prefix_histogram_png(workdir / layout.PREFIX_HISTOGRAM, prefixes)
    fractions = [shared / max(1, chosen) for shared, _, chosen in prefixes]
    answer_tokens = sum(rejected + chosen for _, rejected, chosen in prefixes)
    prefix_stats = {"mean": mean(fractions), "median": median(fractions),
                    "answer_tokens_saved": sum(shared for shared, _, _ in prefixes) / max(1, answer_tokens)} if prefixes else {}
    write_file(workdir / layout.REPORT_JSON,
                 json.dumps({"counts": counts, "kept_change_ratio": ratio_stats, "kept_common_prefix": prefix_stats},
                            indent=2) + "\n")

    lines = ["# Rectification report", "", "## Counts", "", "| stage | what | count |", "|---|---|---:|"]
    lines += [f"| {stage} | {what} | {n} |" for stage, table in counts.items() for what, n in table.items()]
    lines += ["", "## Change ratio", "", f"![change ratio histogram]({layout.HISTOGRAM})", ""]
    if ratio_stats:
        lines.append("Kept pairs: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio_stats.items()) + ".")
    lines += ["", "## Common prefix", "", f"![common-prefix histogram]({layout.PREFIX_HISTOGRAM})", ""]
    if prefix_stats:
        lines.append(f"Kept pairs: the two answers share their first {prefix_stats['mean']:.1%} of y+ on average "
                     f"(median {prefix_stats['median']:.1%}). The trainer forwards that prefix (and the prompt) "
                     f"once per pair (`--share-prefix on`): {prefix_stats['answer_tokens_saved']:.1%} fewer answer "
                     f"tokens than forwarding both answers whole.")
    lines += ["", "## Examples", "",
              "Token-level edits of kept pairs: `[-removed-]` was only in the original answer, "
              "`{+added+}` only in the correction.", ""]
    for pair in spread_examples(pairs, examples):
        diff = marked_diff(tokenizer, pair["original_answer"], pair["gemini_corrected_answer"])
        lines += [f"### {pair['id']} (R = {pair['change_ratio']:.3f}, answer {pair['answer']})", "",
                  pair["question"], "", "````text", diff, "````", ""]
    write_file(workdir / layout.REPORT, "\n".join(lines))
