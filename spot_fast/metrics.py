"""Metrics: one JSON object per logged step in ``metrics.jsonl``, TensorBoard when installed, and a
PNG plot of loss and implicit rewards at the end."""
import json
from pathlib import Path


class MetricsLog:
    def __init__(self, output_dir, enabled):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.file = open(self.path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        except ImportError:
            pass

    def log(self, step, values):
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self):
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def plot_metrics(metrics_path, png_path):
    """Loss, and chosen / rejected implicit rewards, against the optimizer step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path, encoding="utf-8") if line.strip()]
    rows = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, [r["loss"] for r in rows])
    left.set(title="loss", xlabel="step")
    for key, label in (("rewards/chosen", "chosen (y+)"), ("rewards/rejected", "rejected (y-)"), ("delta", "delta")):
        if rows and key in rows[0]:
            right.plot(steps, [r[key] for r in rows], label=label)
    right.set(title="implicit rewards", xlabel="step")
    right.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
