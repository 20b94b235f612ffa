"""training.png (spot_fast.metrics.plot_metrics): which panels a run gets, that none is empty, the
smoothed curves and integer step ticks."""
import json

import matplotlib.image
import pytest

from spot_fast.metrics import PEAR_LOSS_TITLE, metrics_figure, plot_metrics, smoothed


def rows(keys, steps=7):
    """Logged rows as the trainer writes them: every key at every step, with a wobbling value."""
    return [{"step": step, **{key: 1.0 + 0.1 * (-1) ** step / step for key in keys}} for step in range(1, steps + 1)]


SPOT = ("loss", "chosen/nll", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "delta",
        "lr", "tokens_per_s")
PEAR = ("loss", "chosen/nll", "pear/weight_mean", "pear/weight_at_min", "pear/weight_at_max", "lr")


@pytest.mark.parametrize("keys, titles", [
    (SPOT, ["loss", "NLL per token of the training answers (y+)", "implicit rewards",
            "reward margin: chosen - rejected", "reward accuracy: fraction with chosen > rejected", "learning rate"]),
    (PEAR, [PEAR_LOSS_TITLE, "NLL per token of the training answers (y+)", "PEAR weights", "learning rate"]),
], ids=["spot_bco", "pear"])
def test_panels_are_the_logged_groups_none_empty_with_integer_step_ticks(keys, titles):
    figure = metrics_figure(rows(keys, steps=3))  # 3 steps: ticks 1, 1.25, ... by default
    figure.canvas.draw()
    assert [axis.get_title() for axis in figure.axes] == titles  # unused grid cells are removed
    for axis in figure.axes:
        assert axis.get_xlabel() == "step" and axis.lines
        assert all(len(line.get_xdata()) == 3 for line in axis.lines)
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    by_title = {axis.get_title(): axis for axis in figure.axes}
    assert len(by_title["learning rate"].lines) == 1  # a schedule: drawn as it is
    loss = by_title[titles[0]]
    assert len(loss.lines) == 2 and list(loss.lines[1].get_ydata()) == pytest.approx(smoothed(loss.lines[0].get_ydata()))
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["per step", "smoothed"]


def test_held_out_series_are_drawn_beside_the_training_series():
    """--eval-data --eval-every 2: eval/ rows at steps 0, 2 and 4 in the panels of their training
    counterparts, and the held-out KL in a panel of its own."""
    evaluated = {"eval/loss": 0.7, "eval/nll": 2.0, "eval/rewards/chosen": 0.1, "eval/rewards/rejected": -0.1,
                 "eval/rewards/margin": 0.2, "eval/rewards/accuracy": 0.5, "eval/kl": 0.01, "eval/kl_k3": 0.02}
    logged = rows(SPOT, steps=4)
    for row in logged:
        if row["step"] % 2 == 0:
            row.update(evaluated)
    figure = metrics_figure([{"step": 0, **evaluated}] + logged)
    by_title = {axis.get_title(): axis for axis in figure.axes}
    for title, label in (("loss", "held-out loss"), ("NLL per token of the training answers (y+)", "held-out NLL"),
                         ("implicit rewards", "held-out rejected"), ("reward margin: chosen - rejected", "held-out margin"),
                         ("reward accuracy: fraction with chosen > rejected", "held-out accuracy"),
                         ("held-out KL(ref || policy) per chosen token", "k3")):
        [line] = [line for line in by_title[title].lines if line.get_label() == label]
        assert list(line.get_xdata()) == [0, 2, 4], title
    assert [t.get_text() for t in by_title["loss"].get_legend().get_texts()] == ["loss", "held-out loss"]


def test_smoothing_starts_at_the_first_value_keeps_a_constant_and_damps_noise():
    assert smoothed([5.0]) == [5.0] and smoothed([2.0] * 40) == pytest.approx([2.0] * 40)
    zigzag = [(-1) ** i for i in range(100)]
    assert max(abs(v) for v in smoothed(zigzag)[20:]) < 0.2


def test_plot_metrics_writes_the_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows(SPOT)))
    plot_metrics(path, tmp_path / "training.png")
    height, width, _ = matplotlib.image.imread(tmp_path / "training.png").shape
    assert (height, width) == (800, 1650)
