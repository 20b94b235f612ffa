"""Metrics: one JSON object per logged step in ``metrics.jsonl``, the same rows (same names, same
steps) to TensorBoard or Weights & Biases (``--report-to``), and a PNG plot at the end: loss, and
whichever of implicit rewards, PEAR weights and retain-set forgetting signals the run logged.

``--report-to``: ``auto`` is TensorBoard where the ``tensorboard`` package is installed, else the JSONL
alone; ``none`` the JSONL alone; ``tensorboard`` and ``wandb`` require their package, W&B also an API
key or ``WANDB_MODE=offline`` (``preflight.check_report_to`` says so before any work).
``metrics.jsonl`` is created with its first row: a run that stops before logging a step leaves none. W&B reads its usual environment (``WANDB_PROJECT``,
default ``spot-fast``; ``WANDB_MODE=offline`` writes the run under OUTPUT_DIR/wandb for a later
``wandb sync``); the run is named after the output directory and carries the run's configuration.
A resumed run starts a new W&B run (W&B cannot take back the steps logged after the checkpoint).
"""
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .crash_safe import write_file
from .preflight import report_to_choice


def pooled_over_ranks(sums, counts, same_on_every_rank=None):
    """``sums[name] / counts[name]`` with both summed over ranks first (name -> 0-d tensor or number,
    the same names on every rank): the mean over everything every rank counted, as floats; and the
    values of ``same_on_every_rank`` (name -> 0-d tensor or number, e.g. the global gradient norm) as
    they are. The device's values come to the host in one copy (and one all-reduce), not one per metric."""
    names, extra = sorted(sums), sorted(same_on_every_rank or {})
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    device = "cuda" if distributed and dist.get_backend() == "nccl" else "cpu"  # NCCL reduces device tensors only
    entries = [table[name] for table in (sums, counts) for name in names] + [same_on_every_rank[n] for n in extra]
    values = one_vector(entries, device)
    if distributed:
        dist.all_reduce(values[:2 * len(names)])
    read = values.tolist()
    totals, numbers = read[:len(names)], read[len(names):2 * len(names)]
    return {name: total / number for name, total, number in zip(names, totals, numbers)} | dict(zip(extra, read[2 * len(names):]))


def one_vector(entries, device):
    """The float64 vector of ``entries`` (0-d tensors and numbers) on ``device``: stacked where the
    tensors live (numbers as device fills, not copies), then moved in one copy."""
    home = next((value.device for value in entries if isinstance(value, torch.Tensor)), torch.device(device))
    values = torch.stack([value.detach().reshape(()).to(home, torch.float64) if isinstance(value, torch.Tensor)
                          else torch.full((), float(value), dtype=torch.float64, device=home) for value in entries])
    return values.to(device)


class MetricsWindow:
    """The metrics of the micro-batches between two logged steps: ``row`` pools them over
    micro-batches and ranks, each metric weighted by what it is a mean over (``counts``: pairs or
    tokens, see ``objective.micro_batch_loss``), so a row does not depend on how the step's pairs
    were split; and adds the tokens forwarded, the tokens the unshared layout would have forwarded,
    and the throughput (time spent measuring, ``exclude``d, not counted)."""

    def __init__(self):
        self.sums, self.counts, self.tokens, self.unshared_tokens = {}, {}, 0, 0
        self.started = time.perf_counter()

    def add(self, metrics, counts, tokens, unshared_tokens):
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0) + value * counts[name]
            self.counts[name] = self.counts.get(name, 0) + counts[name]
        self.tokens += tokens
        self.unshared_tokens += unshared_tokens

    def exclude(self, seconds):
        self.started += seconds

    def row(self, world, same_on_every_rank=None):
        """The pooled metrics, the values of ``same_on_every_rank`` (read in the same copy) and
        ``tokens_per_s`` (over all ranks), then an empty window."""
        row = pooled_over_ranks(self.sums, self.counts, same_on_every_rank)
        row["tokens_per_s"] = self.tokens * world / (time.perf_counter() - self.started)
        row["tokens/forwarded"] = self.tokens * world
        row["tokens/shared_fraction"] = 1.0 - self.tokens / self.unshared_tokens
        self.__init__()
        return row


class TensorBoardReport:
    def __init__(self, output_dir, run_config):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def log(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self):
        self.writer.close()


class WandbReport:
    """A W&B run. ``close`` returns once the run's files are complete on disk: W&B's service process
    writes the transaction log (``run-ID.wandb``) through a buffer and closes it after ``finish()``
    has returned (the stream is closed by a message ``finish()`` sends without waiting), so ``close``
    also tears W&B down, which waits for that process to close every run and exit."""

    def __init__(self, output_dir, run_config):
        import wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "spot-fast"), name=Path(output_dir).name,
                              dir=str(output_dir), config=run_config)

    def log(self, step, values):
        self.run.log(values, step=step)

    def close(self):
        import wandb
        self.run.finish()
        wandb.teardown()


REPORTS = {"tensorboard": TensorBoardReport, "wandb": WandbReport}


def open_report(report_to, output_dir, run_config):
    """The report ``report_to`` names (``auto``: TensorBoard where installed), or None."""
    report_to = report_to_choice(report_to)
    return REPORTS[report_to](output_dir, run_config) if report_to in REPORTS else None


class MetricsLog:
    """``metrics.jsonl`` (and the ``--report-to`` report) of one run. A resumed run first drops the
    rows logged after the checkpoint it resumes from, so no step is logged twice in the JSONL. The file
    is opened (created, for a fresh run) by the first ``log``."""

    def __init__(self, output_dir, enabled, resumed_step=None, report_to="auto", run_config=None):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.report = self.file = None
        if not enabled:
            return
        if resumed_step is not None and self.path.exists():
            self._truncate_after(resumed_step)
        self.report = open_report(report_to, output_dir, run_config or {})

    def _truncate_after(self, step):
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        write_file(self.path, "".join(kept))

    def log(self, step, values):
        if not self.enabled:
            return
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.report is not None:
            self.report.log(step, values)

    def close(self):
        if self.enabled:
            if self.file is not None:
                self.file.close()
            if self.report is not None:
                self.report.close()


PEAR_LOSS_TITLE = "PEAR loss: importance-weighted NLL (rises as the weights grow)"
PANELS = (  # eval/ series (--eval-data) are drawn beside the training series they are the held-out side of
    ("loss", (("loss", "loss"), ("eval/loss", "held-out loss"))),
    ("NLL per token of the training answers (y+)", (("chosen/nll", "NLL"), ("eval/nll", "held-out NLL"))),
    ("implicit rewards", (("rewards/chosen", "chosen (y+)"), ("rewards/rejected", "rejected (y-)"), ("delta", "delta"),
                          ("eval/rewards/chosen", "held-out chosen"), ("eval/rewards/rejected", "held-out rejected"))),
    ("reward margin: chosen - rejected", (("rewards/margin", "margin"), ("eval/rewards/margin", "held-out margin"))),
    ("reward accuracy: fraction with chosen > rejected", (("rewards/accuracy", "accuracy"),
                                                           ("eval/rewards/accuracy", "held-out accuracy"))),
    ("held-out KL(ref || policy) per chosen token", (("eval/kl", "k1"), ("eval/kl_k3", "k3"))),
    ("PEAR weights", (("pear/weight_mean", "mean weight"), ("pear/weight_at_min", "fraction at w_min"),
                      ("pear/weight_at_max", "fraction at w_max"))),
    ("forgetting: KL(ref || policy) per retain token", (("retain/kl", "k1 (= NLL change)"), ("retain/kl_k3", "k3"))),
    ("retain-set NLL per token", (("retain/nll", "NLL"),)),
    ("learning rate", (("lr", "lr"),)),
)
UNSMOOTHED = {"lr"}  # a schedule, not a noisy measurement


def smoothed(values):
    """An exponential moving average of ``values`` over about a tenth of them (at least 3), debiased
    at the start as TensorBoard's is (each point divides by the weight the average has gathered)."""
    decay = 1 - 2 / (max(3, len(values) / 10) + 1)
    average, weight, out = 0.0, 0.0, []
    for value in values:
        average = decay * average + (1 - decay) * value
        weight = decay * weight + (1 - decay)
        out.append(average / weight)
    return out


def logged_panels(rows):
    """``(title, [(key, label, steps, values)])`` for each group of ``PANELS`` the run logged. PEAR's
    loss is titled as what it is: its weights grow as the policy leaves the behaviour policy, so it may
    climb while the NLL of the training answers, the panel after it, falls."""
    panels = []
    for title, series in PANELS:
        if title == "loss" and any("pear/weight_mean" in row for row in rows):
            title = PEAR_LOSS_TITLE
        curves = []
        for key, label in series:
            points = [(row["step"], row[key]) for row in rows if key in row]
            if points:
                curves.append((key, label, *map(list, zip(*points))))
        if curves:
            panels.append((title, curves))
    return panels


def metrics_figure(rows):
    """The figure of ``plot_metrics`` for the logged ``rows`` (None when no panel has a point)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = logged_panels(rows)
    if not panels:
        return None
    columns = min(3, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(5.5 * columns, 4 * rows_of_panels), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.remove()
    for axis, (title, curves) in zip(axes.flat, panels):
        for key, label, steps, values in curves:
            marker = "." if len(steps) < 30 else None
            if key in UNSMOOTHED:
                axis.plot(steps, values, marker=marker, label=label)
                continue
            raw, = axis.plot(steps, values, marker=marker, alpha=0.3, linewidth=0.8,
                             label="per step" if len(curves) == 1 else None)
            axis.plot(steps, smoothed(values), color=raw.get_color(),
                      label="smoothed" if len(curves) == 1 else label)
        axis.set(title=title, xlabel="step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axis.get_legend_handles_labels()[0] and not (len(curves) == 1 and curves[0][0] in UNSMOOTHED):
            axis.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_metrics(metrics_path, png_path):
    """``training.png``: one panel per group of ``PANELS`` that the run logged, each series against the
    optimizer step (integer ticks), per step (faint) and ``smoothed``; the learning rate as it is."""
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path, encoding="utf-8") if line.strip()]
    fig = metrics_figure(rows)
    if fig is None:
        return
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
