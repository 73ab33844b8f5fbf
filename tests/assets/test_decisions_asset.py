"""The routing_decisions asset: the gateway's decision files into the warehouse, idempotently, with its plots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import polars as pl
import pytest

import warehouse as wh
from assets.decisions import routing_decisions
from assets.resources import WarehouseResource
from serving.decisions import DecisionLog, read_decisions
from warehouse.schema import MIGRATIONS

NOW = datetime.now(UTC).replace(microsecond=0)


def write_decisions(directory, n: int, start: int = 0) -> None:
    """``n`` decisions over three days and three LLMs, half with a max_cost_per_query, written by a DecisionLog."""
    with DecisionLog(directory, batch_size=16, flush_interval_s=0.01) as log:
        for i in range(start, start + n):
            budgeted = i % 2 == 0
            log.record(
                {
                    "request_id": f"req-{i}",
                    "at": NOW - timedelta(days=i % 3, minutes=i),
                    "key_id": f"k{i % 2}",
                    "prompt_hash": f"h{i}",
                    "router_version": "2",
                    "model_requested": "uniroute",
                    "chosen_llm": ["cheap", "math-pro", None][i % 3],
                    "cost_weight": 0.1,
                    "budget_kind": "max_cost_per_query" if budgeted else None,
                    "budget_value": 0.002 if budgeted else None,
                    "candidates": ["cheap", "math-pro"],
                    "predicted_error": {"cheap": 0.4, "math-pro": 0.2},
                    "predicted_cost": {"cheap": 0.001, "math-pro": 0.003},
                    "attempts": [{"llm": "cheap", "try_number": 1, "status": 200, "error": None, "seconds": 0.1}],
                    "status": 200 if i % 3 != 2 else 502,
                    "prompt_tokens": 10,
                    "completion_tokens": 20,
                    "realised_cost_usd": 0.001 * (1 + i % 4),
                    "latency_ms": 100.0 + i,
                    "stream": i % 5 == 0,
                }
            )


def test_loads_every_file_once_with_plots(instance, tmp_path):
    directory, path = tmp_path / "decisions", tmp_path / "w.duckdb"
    write_decisions(directory, 60)
    resources = {"warehouse": WarehouseResource(path=str(path))}

    def materialise(move: bool = False) -> dict:  # not moved: every run reads every file again
        config = {"directory": str(directory), "move_loaded": move}
        run_config = {"ops": {"routing_decisions": {"config": config}}}
        result = dg.materialize([routing_decisions], resources=resources, instance=instance, run_config=run_config)
        assert result.success
        return {k: v.value for k, v in result.asset_materializations_for_node("routing_decisions")[0].metadata.items()}

    first = materialise()
    assert (first["rows_loaded"], first["rows_total"], first["files"]) == (60, 60, 4)
    for plot in ("cost_vs_budget", "llm_mix_per_day"):
        assert first[plot].startswith(f"![{plot}](data:image/png;base64,") and len(first[plot]) > 2000
    # budget 0.002 on even requests; realised 0.001 * (1 + i % 4): i % 4 == 2 costs 0.003, over it
    assert first["over_budget_last_30_days"] == 15

    again = materialise()
    assert (again["rows_loaded"], again["rows_total"]) == (0, 60)

    write_decisions(directory, 10, start=55)  # 5 repeated (a retried file), 5 new
    third = materialise()
    assert (third["rows_loaded"], third["rows_total"]) == (5, 65)

    with wh.connect(path) as con:
        stored = wh.read_routing_decisions(con)
        recent = wh.read_routing_decisions(con, since=NOW - timedelta(hours=12))
    assert stored.height == 65 and stored["request_id"].n_unique() == 65
    row = stored.filter(pl.col("request_id") == "req-0").row(0, named=True)
    assert row["decided_at"] == NOW.replace(tzinfo=None)  # the log's "at", stored as naive UTC
    assert row["candidates"] == ["cheap", "math-pro"] and row["budget_kind"] == "max_cost_per_query"
    assert row["loaded_at"] is not None and row["stream"] is True
    assert set(recent["request_id"]) == {
        r
        for r, at in stored.select("request_id", "decided_at").iter_rows()
        if at >= (NOW - timedelta(hours=12)).replace(tzinfo=None)
    }
    assert 0 < recent.height < 65


def test_no_files_yet_still_plots(instance, tmp_path):
    result = dg.materialize(
        [routing_decisions],
        resources={"warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb"))},
        instance=instance,
        run_config={"ops": {"routing_decisions": {"config": {"directory": str(tmp_path / "none")}}}},
    )
    meta = result.asset_materializations_for_node("routing_decisions")[0].metadata
    assert meta["rows_total"].value == 0 and "data:image/png" in meta["llm_mix_per_day"].value


def test_store_refuses_bad_rows_and_ignores_repeats(tmp_path):
    write_decisions(tmp_path / "d", 6)
    frame = read_decisions(tmp_path / "d")
    with wh.connect(tmp_path / "w.duckdb") as con:
        assert wh.insert_routing_decisions(con, frame) == 6
        assert wh.insert_routing_decisions(con, frame) == 0
        bad = frame.head(1).with_columns(
            pl.lit("req-new").alias("request_id"), pl.lit("max_latency").alias("budget_kind")
        )
        with pytest.raises(wh.WarehouseInputError, match="budget_kind"):
            wh.insert_routing_decisions(con, bad)
        with pytest.raises(wh.WarehouseInputError, match="status"):
            wh.insert_routing_decisions(con, frame.head(1).with_columns(pl.lit(None, pl.Int32).alias("status")))
        assert wh.count_routing_decisions(con) == 6


def test_loaded_files_move_to_loaded_and_are_kept(instance, tmp_path):
    directory = tmp_path / "decisions"
    write_decisions(directory, 40)
    names = sorted(f.name for f in directory.glob("*.parquet"))
    resources = {"warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb"))}
    run_config = {"ops": {"routing_decisions": {"config": {"directory": str(directory)}}}}  # move_loaded: default

    def materialise() -> dict:
        result = dg.materialize([routing_decisions], resources=resources, instance=instance, run_config=run_config)
        assert result.success
        return {k: v.value for k, v in result.asset_materializations_for_node("routing_decisions")[0].metadata.items()}

    first = materialise()
    assert (first["rows_loaded"], first["rows_total"], first["files"], first["files_moved_to_loaded"]) == (40, 40, 3, 3)
    assert list(directory.glob("*.parquet")) == [] and sorted(f.name for f in (directory / "loaded").iterdir()) == names
    assert read_decisions(directory / "loaded").height == 40  # kept, readable

    write_decisions(directory, 5, start=40)
    second = materialise()
    assert (second["rows_loaded"], second["rows_total"], second["files"]) == (5, 45, 1)
    assert len(list((directory / "loaded").iterdir())) == 4


LEARNED = ("embedder_id", "cluster_weights", "ranked_llms", "ranked_predicted_error", "ranked_predicted_cost")
ROLLOUT = ("served_alias", "shadow_version", "shadow_llm", "shadow_predicted_error", "shadow_predicted_cost")


def test_the_new_columns_load_beside_an_older_gateways_file_and_an_older_warehouse(instance, tmp_path):
    directory, path = tmp_path / "decisions", tmp_path / "w.duckdb"
    write_decisions(directory, 4)
    older = (
        read_decisions(directory)
        .drop(*LEARNED, *ROLLOUT)
        .with_columns(pl.format("old-{}", "request_id").alias("request_id"))
    )
    older.write_parquet(directory / "decisions-older-gateway-000000.parquet")  # a file from before the columns
    with DecisionLog(directory, flush_interval_s=0.01) as log:
        log.record(
            {
                "request_id": "learned",
                "status": 200,
                "model_requested": "uniroute",
                "embedder_id": "mini-d384",
                "cluster_weights": [0.5, 0.3, 0.2],
                "ranked_llms": ["math-pro", "cheap"],
                "ranked_predicted_error": [0.2, 0.4],
                "ranked_predicted_cost": [0.003, 0.001],
                **dict(zip(ROLLOUT, ("challenger", "1", "cheap", 0.4, 0.001), strict=True)),  # a canary's
            }
        )
    with duckdb.connect(str(path)) as raw:  # a warehouse from before the columns, one decision in it already
        raw.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
        for version, sql in enumerate(MIGRATIONS[:8], start=1):  # before migration 9 added the columns
            raw.execute(sql)
            raw.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
        raw.execute(
            "INSERT INTO routing_decisions VALUES ('before', now(), NULL, NULL, NULL, NULL, NULL, NULL, "
            "'none', NULL, NULL, NULL, NULL, NULL, 200, NULL, NULL, NULL, NULL, NULL, now())"
        )
    result = dg.materialize(
        [routing_decisions],
        resources={"warehouse": WarehouseResource(path=str(path))},
        instance=instance,
        run_config={"ops": {"routing_decisions": {"config": {"directory": str(directory)}}}},
    )
    assert result.success
    with wh.connect(path) as con:
        stored = {row["request_id"]: row for row in wh.read_routing_decisions(con).iter_rows(named=True)}
    olds = ("before", "old-req-0", "req-0")
    assert len(stored) == 10 and all(stored[r][c] is None for r in olds for c in (*LEARNED, *ROLLOUT))
    learned = stored["learned"]
    assert learned["cluster_weights"] == [0.5, 0.3, 0.2] and learned["ranked_llms"] == ["math-pro", "cheap"]
    assert learned["ranked_predicted_error"] == [0.2, 0.4] and learned["ranked_predicted_cost"] == [0.003, 0.001]
    assert learned["embedder_id"] == "mini-d384"
    assert tuple(learned[c] for c in ROLLOUT) == ("challenger", "1", "cheap", 0.4, 0.001)  # migration 12's columns
