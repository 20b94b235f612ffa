"""The evaluation's outputs, each written atomically: ``results.json``, ``results.md`` (Markdown tables),
``accuracy.png`` (avg@k +- std per benchmark, the models side by side) and, when some model is a
training checkpoint, ``accuracy_by_step.png`` (avg@k +- std against the training step, one line per
benchmark; models without a step drawn as dashed horizontal lines for reference).

``results`` is ``{"settings": {...}, "models": [{"label", "model", "step", "benchmarks": {name:
metrics}}]}`` with the metrics of ``scores.summarize`` (``ifeval.summarize`` for an IFEval benchmark,
whose headline accuracy, in the first table and the plots, is prompt-level strict accuracy; a third
table gives its four accuracies).
"""
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from spot_fast.crash_safe import write_file  # noqa: E402

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
MODELS_PNG = "accuracy.png"
STEPS_PNG = "accuracy_by_step.png"


def _percent(x):
    return f"{100 * x:.1f}"


def _is_ifeval(metrics):
    return "ifeval" in metrics


def _headline(name, metrics):
    """A benchmark's name, for an IFEval one with the accuracy that stands for it."""
    return f"{name} (prompt strict)" if _is_ifeval(metrics) else name


def _ifeval_table(models):
    rows = [(model, name, m) for model in models for name, m in model["benchmarks"].items() if _is_ifeval(m)]
    if not rows:
        return []
    from spot_fast.evaluate.ifeval import ACCURACIES, ACCURACY_NAMES

    lines = ["", "IFEval accuracy in percent, avg@k +- std, as the reference reports it:", "",
             "| model | step | benchmark | k | " + " | ".join(ACCURACY_NAMES[a] for a in ACCURACIES) + " |",
             "|" + "---|" * (4 + len(ACCURACIES))]
    for model, name, m in rows:
        step = "" if model["step"] is None else str(model["step"])
        cells = [f"{_percent(m['ifeval'][a]['avg'])} +- {_percent(m['ifeval'][a]['std'])}" for a in ACCURACIES]
        lines.append(f"| {model['label']} | {step} | {name} | {m['samples']} | " + " | ".join(cells) + " |")
    return lines


def markdown(results):
    """Tables: avg@k +- std per model and benchmark, every metric per (model, benchmark), and the four
    IFEval accuracies of each IFEval benchmark."""
    models = results["models"]
    names = list(models[0]["benchmarks"])
    header = ["model"] + [f"{_headline(name, models[0]['benchmarks'][name])} avg@{models[0]['benchmarks'][name]['samples']}"
                          for name in names]
    lines = ["# Evaluation", "", "Accuracy in percent: avg@k +- std across the k repetitions.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        cells = [f"{_percent(m['avg'])} +- {_percent(m['std'])}" for m in model["benchmarks"].values()]
        lines.append("| " + " | ".join([model["label"]] + cells) + " |")
    lines += ["", "| model | step | benchmark | problems | k | avg@k | std | pass@k | mean tokens | truncated | "
              "no answer |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in models:
        step = "" if model["step"] is None else str(model["step"])
        for name, m in model["benchmarks"].items():
            lines.append(f"| {model['label']} | {step} | {name} | {m['problems']} | {m['samples']} | "
                         f"{_percent(m['avg'])} | {_percent(m['std'])} | {_percent(m['pass_at'][str(m['samples'])])} | "
                         f"{m['mean_tokens']:.1f} | {_percent(m['truncation_rate'])} | {_percent(m['no_answer_rate'])} |")
    lines += _ifeval_table(models)
    return "\n".join(lines) + "\n"


def _png(figure):
    data = io.BytesIO()
    figure.tight_layout()
    figure.savefig(data, format="png", dpi=100)
    plt.close(figure)
    return data.getvalue()


def models_figure(results):
    """Grouped bars: one group per benchmark, one bar per model, std as the error bar, each bar labelled
    with its avg@k (so a score of 0, which draws no bar, still reads as one)."""
    models = results["models"]
    names = list(models[0]["benchmarks"])
    width = 0.8 / len(models)
    figure, axes = plt.subplots(figsize=(max(6, 1.5 * len(names) * max(1, len(models) / 3)), 4))
    for i, model in enumerate(models):
        positions = [b + (i - (len(models) - 1) / 2) * width for b in range(len(names))]
        metrics = [model["benchmarks"][name] for name in names]
        bars = axes.bar(positions, [100 * m["avg"] for m in metrics], width, yerr=[100 * m["std"] for m in metrics],
                        capsize=3, label=model["label"])
        axes.bar_label(bars, labels=[_percent(m["avg"]) for m in metrics], padding=2, fontsize=8)
    axes.set_xticks(range(len(names)), [_headline(name, models[0]["benchmarks"][name]) for name in names])
    axes.set_ylabel("avg@k (%)")
    axes.set_ylim(0, 105)
    axes.legend()
    return figure


def models_png(results):
    return _png(models_figure(results))


def steps_png(results):
    """avg@k +- std against the training step, one line per benchmark (see the module docstring)."""
    return _png(steps_figure(results))


def steps_figure(results):
    stepped = sorted((m for m in results["models"] if m["step"] is not None), key=lambda m: m["step"])
    references = [m for m in results["models"] if m["step"] is None]
    figure, axes = plt.subplots(figsize=(7, 4))
    for name in stepped[0]["benchmarks"]:
        steps = [m["step"] for m in stepped]
        line = axes.errorbar(steps, [100 * m["benchmarks"][name]["avg"] for m in stepped],
                             yerr=[100 * m["benchmarks"][name]["std"] for m in stepped], marker="o", capsize=3,
                             label=_headline(name, stepped[0]["benchmarks"][name]))
        for reference in references:
            axes.axhline(100 * reference["benchmarks"][name]["avg"], linestyle="--", color=line[0].get_color(),
                         label=f"{name}: {reference['label']}")
    axes.set_xlabel("training step")
    axes.set_ylabel("avg@k (%)")
    axes.set_ylim(0, 100)
    axes.legend()
    return figure


def write_reports(output_dir, results):
    """Write every output for ``results``; returns the paths written."""
    output_dir = Path(output_dir)
    outputs = {RESULTS_JSON: json.dumps(results, indent=2) + "\n", RESULTS_MD: markdown(results),
               MODELS_PNG: models_png(results)}
    if any(m["step"] is not None for m in results["models"]):
        outputs[STEPS_PNG] = steps_png(results)
    for name, data in outputs.items():
        write_file(output_dir / name, data)
    return [output_dir / name for name in outputs]
