"""A real DuckDB file: ratings kept as history with the latest standing, sampled traffic and its retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

import warehouse as wh

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def con(tmp_path):
    con = wh.connect(tmp_path / "w.duckdb")
    yield con
    con.close()


def _ratings(rows: list[tuple[str, str, float, datetime]], source: str = "api") -> pl.DataFrame:
    """Ratings as the gateway's feedback file holds them (``at`` aware UTC)."""
    ids, requests, scores, times = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "feedback_id": ids,
            "request_id": requests,
            "key_id": ["k1"] * len(rows),
            "score": scores,
            "at": times,
            "source": [source] * len(rows),
        },
        schema_overrides={"at": pl.Datetime("us", "UTC")},
    )


def _samples(ages_days: list[float]) -> pl.DataFrame:
    n = len(ages_days)
    return pl.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "at": [NOW - timedelta(days=d) for d in ages_days],
            "key_id": "k1",
            "router_version": "3",
            "chosen_llm": "cheap",
            "prompt": [f"secret prompt {i}" for i in range(n)],
            "messages": '[{"role": "user", "content": "hi"}]',
            "answer": "an answer",
            "embedder_id": "mini",
            "cluster_weights": [[0.25, 0.75]] * n,
        },
        schema_overrides={"at": pl.Datetime("us", "UTC")},
    )


def test_history_is_kept_and_the_latest_rating_stands(con):
    first = _ratings(
        [
            ("f1", "a", 0.0, NOW - timedelta(hours=2)),
            ("f2", "a", 1.0, NOW - timedelta(hours=1)),  # a changes its mind: the later rating stands
            ("f3", "b", 0.25, NOW),
            ("f5", "b", 0.75, NOW),  # same time: the greater feedback_id stands
            ("f4", "b", 0.5, NOW),
        ]
    )
    assert wh.insert_traffic_feedback(con, first) == 5
    assert wh.insert_traffic_feedback(con, first) == 0  # the same file again: nothing new
    assert wh.count_traffic_feedback(con) == 5
    history = wh.read_traffic_feedback(con, "a")
    assert history["score"].to_list() == [0.0, 1.0]
    assert history["rated_at"][0] == (NOW - timedelta(hours=2)).replace(tzinfo=None)  # naive UTC
    latest = wh.read_latest_feedback(con)
    assert latest.columns == ["request_id", "key_id", "score", "rated_at", "source"]
    assert latest.select("request_id", "score").rows() == [("a", 1.0), ("b", 0.75)]

    wh.insert_traffic_feedback(con, _ratings([("f9", "a", 0.0, NOW - timedelta(days=1))]))  # late: older, greater id
    assert wh.read_latest_feedback(con).select("request_id", "score").rows() == [("a", 1.0), ("b", 0.75)]
    assert wh.read_traffic_feedback(con, "a").height == 3


@pytest.mark.parametrize("score", [1.5, -0.1, float("nan"), float("inf")])
def test_a_bad_score_is_named_and_nothing_is_stored(con, score):
    frame = _ratings([("f1", "a", 0.5, NOW), ("f2", "b", score, NOW)])
    with pytest.raises(wh.WarehouseInputError, match=r"traffic_feedback\.score=.*must be finite and in \[0, 1\]"):
        wh.insert_traffic_feedback(con, frame)
    assert wh.count_traffic_feedback(con) == 0


def test_a_rating_needs_its_request_and_a_source(con):
    with pytest.raises(wh.WarehouseInputError, match=r"traffic_feedback\.request_id=None"):
        wh.insert_traffic_feedback(con, _ratings([("f1", None, 0.5, NOW)]))
    with pytest.raises(wh.WarehouseInputError, match=r"traffic_feedback\.source=''"):
        wh.insert_traffic_feedback(con, _ratings([("f1", "a", 0.5, NOW)], source=""))
    assert wh.count_traffic_feedback(con) == 0


def test_unknown_request_ids_are_those_without_a_decision(con):
    decision = {"request_id": ["a"], "at": [NOW], "status": [200], "budget_kind": ["none"]}
    wh.insert_routing_decisions(con, pl.DataFrame(decision, schema_overrides={"status": pl.Int32}))
    assert wh.unknown_request_ids(con, ["b", "a", "c", "b"]) == ["b", "c"]
    assert wh.unknown_request_ids(con, []) == []


def test_samples_load_once_and_retention_deletes_the_old_text(con):
    samples = _samples([0.5, 10, 29.9, 31, 400])
    assert wh.insert_traffic_samples(con, samples) == 5
    assert wh.insert_traffic_samples(con, samples) == 0
    stored = wh.read_traffic_samples(con)
    assert stored.filter(pl.col("request_id") == "r0").row(0, named=True)["cluster_weights"] == [0.25, 0.75]
    assert stored["sampled_at"].max() == (NOW - timedelta(days=0.5)).replace(tzinfo=None)

    assert wh.delete_traffic_older_than(con, 30, now=NOW) == 2
    assert sorted(wh.read_traffic_samples(con)["request_id"]) == ["r0", "r1", "r2"]
    texts = con.execute("SELECT count(*) FROM traffic_samples WHERE prompt LIKE '%prompt 3%'").fetchone()[0]
    assert texts == 0
    assert wh.delete_traffic_older_than(con, 30, now=NOW) == 0
    assert wh.read_traffic_samples(con, since=NOW - timedelta(days=1))["request_id"].to_list() == ["r0"]
    assert wh.delete_traffic_older_than(con, 0, now=NOW) == 3 and wh.count_traffic_samples(con) == 0


@pytest.mark.parametrize("days", [-1, float("nan"), float("inf"), "30"])
def test_a_bad_retention_is_named(con, days):
    with pytest.raises(wh.WarehouseInputError, match=r"traffic_samples\.retention_days=.*finite number >= 0"):
        wh.delete_traffic_older_than(con, days)
