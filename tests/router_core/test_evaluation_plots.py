"""The deferral-curve figure names each single LLM's point and draws the points at both ends of the cost range
whole (not clipped by the axes)."""

from __future__ import annotations

import matplotlib
import polars as pl
import pytest

from router_core import plot_deferral_curves

matplotlib.use("Agg")


def _curve(points):
    return pl.DataFrame(points, schema=["cost_weight", "cost", "accuracy"], orient="row")


@pytest.mark.parametrize("costs", [(0.1, 0.5, 1.0), (0.001, 0.05, 2.0)], ids=["linear", "log"])
def test_single_llms_are_labelled_and_the_end_points_drawn_whole(costs):
    import matplotlib.pyplot as plt

    llms = pl.DataFrame({"model": ["cheap", "mid", "best"], "cost": list(costs), "accuracy": [0.4, 0.6, 0.8]})
    curve = _curve([(0.0, costs[2], 0.8), (1.0, costs[1], 0.65), (10.0, costs[0], 0.4)])
    fig = plot_deferral_curves({"UniRoute": curve}, single_llms=llms, cost_range=(costs[0], costs[2]))
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.texts} == {"cheap", "mid", "best"}
    left, right = ax.get_xlim()
    assert left < costs[0] and right > costs[2]  # a margin: the end points are not cut in half
    fig.canvas.draw()
    axes_box = ax.get_window_extent()
    for text in ax.texts:  # every name stays inside the axes
        box = text.get_window_extent()
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1, text.get_text()
    plt.close(fig)


def test_points_without_names_still_plot():
    import matplotlib.pyplot as plt

    llms = pl.DataFrame({"cost": [1.0, 2.0], "accuracy": [0.5, 0.7]})
    fig = plot_deferral_curves({"A": _curve([(0.0, 2.0, 0.7), (1.0, 1.0, 0.5)])}, single_llms=llms, cost_range=(1, 2))
    assert len(fig.axes[0].texts) == 0 and fig.axes[0].get_xlim()[1] > 2
    plt.close(fig)


def _overlapping(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def test_labels_of_close_points_do_not_overlap():
    import matplotlib.pyplot as plt

    names = ["deepseek-coder-v2", "qwen-2.5-7b", "llama-3.1-8b", "mistral-7b", "gpt-4o", "claude-3.5", "gemini-pro"]
    costs = [0.0011, 0.0012, 0.00125, 0.0013, 0.02, 0.021, 0.019]
    accuracies = [0.50, 0.505, 0.51, 0.498, 0.80, 0.802, 0.799]
    llms = pl.DataFrame({"model": names, "cost": costs, "accuracy": accuracies})
    curve = _curve([(0.0, 0.021, 0.8), (1.0, 0.005, 0.7), (10.0, 0.0011, 0.5)])
    fig = plot_deferral_curves({"UniRoute": curve}, single_llms=llms, cost_range=(0.0011, 0.021))
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 7 and not _overlapping(boxes), _overlapping(boxes)
    axes_box = ax.get_window_extent(renderer)
    assert all(axes_box.y0 <= b.y0 and b.y1 <= axes_box.y1 for b in boxes)  # nudged, still inside
    plt.close(fig)


@pytest.mark.parametrize("cost_range", [(0.00011, 0.0009), (0.00002, 0.05), (0.001, 0.0013)], ids=str)
def test_cost_ticks_are_plain_dollars_that_do_not_collide(cost_range):
    import matplotlib.pyplot as plt

    low, high = cost_range
    curve = _curve([(0.0, high, 0.8), (10.0, low, 0.5)])
    fig = plot_deferral_curves({"UniRoute": curve}, cost_range=cost_range)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    left, right = ax.get_xlim()
    shown = [t for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True) if t.get_text()]
    shown = [t for t in shown if left <= t.get_position()[0] <= right]
    texts = [t.get_text() for t in shown]
    assert 2 <= len(shown) <= 6, texts
    assert all(t.startswith("$") and "e" not in t and "^" not in t for t in texts), texts  # no 10^-4, no 1e-4
    assert not _overlapping([t.get_window_extent(renderer) for t in shown]), texts
    assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]  # minor ticks unlabelled
    plt.close(fig)
