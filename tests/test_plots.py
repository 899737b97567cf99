"""The run's loss plot: raw training points with a debiased moving average through them."""

from __future__ import annotations

import pytest

from tunesmith.plots import loss_figure, plot_loss_curves, smoothed, smoothing_weight


def test_smoothed_is_the_debiased_moving_average():
    """By hand for w = 0.5: s = 0.5·s + 0.5·x from 0, divided by 1 - 0.5^t."""
    values = [4.0, 2.0, 3.0, 1.0]
    raw, expected = 0.0, []
    for t, x in enumerate(values, start=1):
        raw = 0.5 * raw + 0.5 * x
        expected.append(raw / (1 - 0.5 ** t))
    assert smoothed(values, 0.5) == pytest.approx(expected)
    assert expected[:2] == pytest.approx([4.0, 8 / 3])  # the first point is the first value, not pulled to 0
    assert smoothed([2.5] * 50, 0.9) == pytest.approx([2.5] * 50)  # a flat curve stays flat from the start
    assert smoothed(values, 0.0) == values


def test_smoothing_window_follows_the_curve_length():
    assert smoothing_weight(9) == 0.0  # a handful of points: drawn as they are
    assert smoothing_weight(10) == pytest.approx(1 - 1 / 3)
    assert smoothing_weight(400) == pytest.approx(1 - 1 / 40)
    assert smoothing_weight(100_000) == pytest.approx(1 - 1 / 100)


def test_loss_png_has_raw_points_the_smoothed_line_and_validation(tmp_path):
    import matplotlib.pyplot as plt

    losses = [3.0 - 0.02 * step + (0.3 if step % 2 else -0.3) for step in range(1, 61)]
    metrics = [{"step": step, "loss": loss} for step, loss in enumerate(losses, start=1)]
    metrics += [{"step": 30, "eval_loss": 2.6}, {"step": 60, "eval_loss": 2.2}]
    fig = loss_figure(metrics, "run")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    plt.close(fig)
    assert list(lines) == ["train loss (each logged step)", "train loss (smoothed)", "validation loss"]
    assert list(lines["train loss (each logged step)"].get_ydata()) == pytest.approx(losses)
    assert list(lines["train loss (smoothed)"].get_ydata()) == pytest.approx(smoothed(losses, smoothing_weight(60)))
    smooth = lines["train loss (smoothed)"].get_ydata()
    # the zig-zag of ±0.3 is mostly gone from the smoothed line
    assert max(abs(a - b) for a, b in zip(smooth[10:], smooth[11:])) < 0.25
    assert list(lines["validation loss"].get_ydata()) == [2.6, 2.2]

    path = plot_loss_curves(metrics, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert plot_loss_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
