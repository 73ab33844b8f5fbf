"""The online-evaluation figures draw what the tables say: calibration points with their intervals, each LLM's
quality vs cost named, and the drift heat map with the alarming cell outlined and thin cells left blank."""

from __future__ import annotations

import matplotlib
import numpy as np
import polars as pl
import pytest

from router_core import (
    calibration,
    drift_alarms,
    online_evaluation,
    plot_drift_heatmap,
    plot_quality_vs_cost,
    plot_reliability,
    quality_vs_cost,
)

matplotlib.use("Agg")


@pytest.fixture
def traffic() -> tuple[pl.DataFrame, pl.DataFrame]:
    """3 LLMs over 3 clusters; llm-b is much worse than predicted in cluster 2; llm-c answers only 5 requests."""
    rng = np.random.default_rng(0)
    cells = [("llm-a", 0, 300, 0.2, 0.2), ("llm-a", 1, 300, 0.3, 0.3), ("llm-b", 2, 300, 0.3, 0.6)]
    cells += [("llm-b", 1, 100, 0.4, 0.4), ("llm-c", 0, 5, 0.1, 0.1)]
    rows, errors = [], []
    for llm, cluster, n, predicted, true in cells:
        cost = {"llm-a": 0.002, "llm-b": 0.02, "llm-c": 0.2}[llm]
        for _ in range(n):
            rows.append((f"r{len(rows)}", llm, np.eye(3)[cluster].tolist(), [llm], [predicted], "{}", cost))
            errors.append(float(rng.random() < true))
    columns = ["request_id", "chosen_llm", "cluster_weights", "ranked_llms", "ranked_predicted_error"]
    decisions = pl.DataFrame(rows, schema=[*columns, "predicted_error", "realised_cost_usd"], orient="row")
    outcomes = decisions.select("request_id", score=1.0 - pl.Series(errors))
    return decisions, outcomes


def test_reliability_plot_has_one_point_per_bin(traffic):
    import matplotlib.pyplot as plt

    table = calibration(*traffic, bins=10)
    fig = plot_reliability(table)
    ax = fig.axes[0]
    points = ax.collections[-1].get_offsets()
    assert len(points) == table.height == 4  # predictions 0.1, 0.2, 0.3, 0.4
    assert np.allclose(points[:, 1], table["observed_error"].to_numpy())
    assert ax.get_xlim() == (0, 1) and "1,005 rated requests" in ax.get_title()
    plt.close(fig)


def test_quality_vs_cost_names_each_llm(traffic):
    import matplotlib.pyplot as plt

    fig = plot_quality_vs_cost(quality_vs_cost(*traffic))
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.texts} == {"llm-a", "llm-b", "llm-c"}
    assert ax.get_xscale() == "log"  # mean costs span more than a factor of 10
    plt.close(fig)


def test_an_llm_without_prices_is_named_not_placed(traffic):
    """A catalog without prices leaves an LLM's realised cost null: the plot names it under the axes."""
    import matplotlib.pyplot as plt

    decisions, outcomes = traffic
    unpriced = pl.when(pl.col("chosen_llm") == "llm-b").then(None).otherwise(pl.col("realised_cost_usd"))
    fig = plot_quality_vs_cost(quality_vs_cost(decisions.with_columns(realised_cost_usd=unpriced), outcomes))
    assert {t.get_text() for t in fig.axes[0].texts} == {"llm-a", "llm-c"}
    assert [t.get_text() for t in fig.texts] == ["no realised cost: llm-b"]
    plt.close(fig)


def test_drift_heatmap_outlines_the_alarm_and_blanks_thin_cells(traffic):
    import matplotlib.pyplot as plt

    counts = pl.DataFrame(
        [(m, k, 500.0) for m in ("llm-a", "llm-b", "llm-c") for k in range(3)],
        schema=["llm", "cluster", "validation_count"],
        orient="row",
    )
    table = online_evaluation(*traffic, counts).by_cluster
    assert drift_alarms(table).select("llm", "cluster").rows() == [("llm-b", 2)]
    fig = plot_drift_heatmap(table, min_count=30)
    ax = fig.axes[0]
    scores = ax.images[0].get_array()
    assert scores.shape == (3, 3)
    assert np.ma.is_masked(scores[2, 0]) or np.isnan(scores[2, 0])  # llm-c: 5 requests, under min_count
    assert scores[1, 2] > 3
    outlined = [(p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches]
    assert outlined == [(2, 1)]  # cluster 2, llm-b
    assert {t.get_text() for t in ax.texts} == {"300", "100", "5"}
    plt.close(fig)


def test_no_rated_traffic_still_draws(traffic):
    import matplotlib.pyplot as plt

    decisions, outcomes = traffic
    nobody = outcomes.head(0)
    figures = [
        plot_reliability(calibration(decisions, nobody)),
        plot_quality_vs_cost(quality_vs_cost(decisions, nobody)),
        plot_drift_heatmap(online_evaluation(decisions, nobody).by_cluster),
    ]
    assert [len(f.axes) >= 1 for f in figures] == [True] * 3
    table = quality_vs_cost(decisions, nobody)
    assert table["requests"].to_list() == [600, 400, 5] and table["rated"].to_list() == [0, 0, 0]
    for figure in figures:
        plt.close(figure)


def test_traffic_all_wrong_or_all_right_draws_its_interval(traffic):
    """A bin or an LLM whose every rated request was wrong (or right) has an interval ending at its point, which
    floating point can put a hair on the wrong side of it: still drawn (matplotlib refuses a negative error bar)."""
    import matplotlib.pyplot as plt

    decisions, outcomes = traffic
    for score in (0.0, 1.0):
        same = outcomes.with_columns(score=pl.lit(score))
        for figure in (
            plot_reliability(calibration(decisions, same)),
            plot_quality_vs_cost(quality_vs_cost(decisions, same)),
        ):
            plt.close(figure)
