"""What makes a version learned from traffic the same version again: the statistics of its outcomes, not their order."""

from __future__ import annotations

import polars as pl

from router_core import traffic_error_stats
from serving import versions


def test_the_traffic_snapshot_follows_the_outcomes_not_their_order():
    outcomes = pl.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(30)],
            "chosen_llm": ["a", "b", "c"] * 10,
            "cluster_weights": [[0.1 * (i % 7), 1 - 0.1 * (i % 7)] for i in range(30)],
            "score": [(i % 4) / 3 for i in range(30)],
        }
    )

    def snapshot(frame: pl.DataFrame, weight: float = 1.0) -> str:
        return versions.traffic_snapshot(traffic_error_stats(frame, ["a", "b", "c"], 2, weight))

    same = snapshot(outcomes)
    assert snapshot(outcomes.reverse()) == snapshot(outcomes.sample(fraction=1.0, shuffle=True, seed=3)) == same
    assert snapshot(outcomes.head(29)) != same  # one outcome fewer
    assert snapshot(outcomes.with_columns(score=pl.col("score") * 0.5)) != same
    assert snapshot(outcomes, weight=0.5) != same  # what one outcome is worth
