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
