"""The traffic_feedback and traffic_samples assets: the gateway's files into a real DuckDB file by real Dagster
materialisations, idempotently; sampled traffic past its retention deleted from the warehouse and from the files."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

import warehouse as wh
from assets.resources import WarehouseResource
from assets.traffic import traffic_feedback, traffic_samples
from pipelines.definitions import defs
from serving.feedback import SCHEMA as FEEDBACK_SCHEMA
from serving.traffic import SCHEMA as TRAFFIC_SCHEMA

NOW = datetime.now(UTC).replace(microsecond=0)


def _write(path, rows: list[dict], schema: dict) -> None:
    """A file as the gateway writes one (under its final name: the rename is the gateway's business)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, schema=schema, orient="row").write_parquet(path)


def _rating(request_id: str, score: float, hours_ago: float) -> dict:
    at = NOW - timedelta(hours=hours_ago)
    return {"feedback_id": uuid.uuid4().hex, "request_id": request_id, "key_id": "k1", "score": score, "at": at}


def _sample(request_id: str, days_ago: float) -> dict:
    return {
        "request_id": request_id,
        "at": NOW - timedelta(days=days_ago),
        "key_id": "k1",
        "router_version": "3",
        "chosen_llm": "cheap",
        "prompt": f"the secret of {request_id}",
        "messages": f'[{{"role": "user", "content": "the secret of {request_id}"}}]',
        "answer": "42",
        "embedder_id": "mini",
        "cluster_weights": [0.5, 0.5],
    }


def _materialise(instance, asset, path, **config) -> dict:
    result = dg.materialize(
        [asset],
        resources={"warehouse": WarehouseResource(path=str(path))},
        instance=instance,
        run_config={"ops": {asset.key.path[-1]: {"config": config}}},
    )
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node(asset.key.path[-1])[0].metadata.items()}


def test_both_assets_are_in_the_definitions():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"traffic_feedback", "traffic_samples"} <= keys


def test_no_files_yet_is_a_run_that_loads_nothing(instance, tmp_path):
    path = tmp_path / "w.duckdb"
    feedback = _materialise(instance, traffic_feedback, path, directory=str(tmp_path / "none"))
    assert (feedback["rows_loaded"], feedback["ratings_total"], feedback["files"]) == (0, 0, 0)
    samples = _materialise(instance, traffic_samples, path, directory=str(tmp_path / "none"))
    assert (samples["rows_loaded"], samples["rows_total"], samples["retention_days"]) == (0, 0, 30)


def test_feedback_history_is_kept_the_latest_stands_and_files_load_once(instance, tmp_path):
    directory, path = tmp_path / "feedback", tmp_path / "w.duckdb"
    with wh.connect(path) as con:  # the gateway's decision of r1; r2's is not loaded yet
        decision = {"request_id": ["r1"], "at": [NOW], "status": [200], "budget_kind": ["none"]}
        wh.insert_routing_decisions(con, pl.DataFrame(decision, schema_overrides={"status": pl.Int32}))
    schema = FEEDBACK_SCHEMA
    first = [_rating("r1", 0.0, 3), _rating("r2", 1.0, 2)]
    _write(directory / "feedback-host-1-a.parquet", [{**r, "source": "api"} for r in first], schema)
    _write(directory / "feedback-host-2-a.parquet", [{**_rating("r1", 1.0, 1), "source": "api"}], schema)
    (directory / ".feedback-host-3-a.parquet.tmp").write_bytes(b"half a file")  # being written: not read

    meta = _materialise(instance, traffic_feedback, path, directory=str(directory), move_loaded=False)
    assert (meta["rows_loaded"], meta["ratings_total"], meta["requests_rated"], meta["files"]) == (3, 3, 2, 2)
    assert meta["requests_without_decision"] == 1 and meta["mean_latest_score"] == 1.0
    again = _materialise(instance, traffic_feedback, path, directory=str(directory), move_loaded=False)
    assert (again["rows_loaded"], again["ratings_total"], again["files_moved_to_loaded"]) == (0, 3, 0)

    moved = _materialise(instance, traffic_feedback, path, directory=str(directory))  # move_loaded: default
    assert (moved["rows_loaded"], moved["files_moved_to_loaded"]) == (0, 2)
    assert sorted(p.name for p in (directory / "loaded").iterdir()) == [
        "feedback-host-1-a.parquet",
        "feedback-host-2-a.parquet",
    ]
    _write(directory / "feedback-host-1-b.parquet", [{**_rating("r1", 0.25, 0), "source": "api"}], schema)
    last = _materialise(instance, traffic_feedback, path, directory=str(directory))
    assert (last["rows_loaded"], last["ratings_total"], last["files"]) == (1, 4, 1)
    with wh.connect(path) as con:
        assert wh.read_traffic_feedback(con, "r1")["score"].to_list() == [0.0, 1.0, 0.25]  # the history
        latest = wh.read_latest_feedback(con)
    assert latest.select("request_id", "score").rows() == [("r1", 0.25), ("r2", 1.0)]


def test_a_bad_rating_in_a_file_fails_the_run_and_stores_nothing(instance, tmp_path):
    directory, path = tmp_path / "feedback", tmp_path / "w.duckdb"
    rows = [{**_rating("r1", 0.5, 1), "source": "api"}, {**_rating("r2", 1.5, 1), "source": "api"}]
    _write(directory / "feedback-host-1-a.parquet", rows, FEEDBACK_SCHEMA)
    result = dg.materialize(
        [traffic_feedback],
        resources={"warehouse": WarehouseResource(path=str(path))},
        instance=instance,
        run_config={"ops": {"traffic_feedback": {"config": {"directory": str(directory)}}}},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.cause.message
    assert "traffic_feedback.score=1.5: must be finite and in [0, 1]" in failure
    assert (directory / "feedback-host-1-a.parquet").exists()  # not moved: loaded once it is fixed
    with wh.connect(path) as con:
        assert wh.count_traffic_feedback(con) == 0


def test_samples_past_retention_leave_the_warehouse_and_the_files(instance, tmp_path):
    directory, path = tmp_path / "traffic", tmp_path / "w.duckdb"
    _write(directory / "traffic-host-1-a.parquet", [_sample("old-1", 40), _sample("old-2", 31)], TRAFFIC_SCHEMA)
    _write(directory / "traffic-host-1-b.parquet", [_sample("old-3", 35), _sample("new-1", 5)], TRAFFIC_SCHEMA)
    _write(directory / "traffic-host-2-a.parquet", [_sample("new-2", 0.1)], TRAFFIC_SCHEMA)

    meta = _materialise(instance, traffic_samples, path, directory=str(directory), retention_days=30)
    assert (meta["rows_loaded"], meta["rows_deleted_past_retention"], meta["rows_total"]) == (5, 3, 2)
    assert (meta["files"], meta["files_moved_to_loaded"]) == (3, 3)
    assert (meta["files_deleted_past_retention"], meta["files_rewritten_past_retention"]) == (1, 1)
    assert "prompts, messages and answers" in meta["stored_user_text"] and meta["retention_days"] == 30
    loaded = directory / "loaded"
    assert sorted(p.name for p in loaded.iterdir()) == ["traffic-host-1-b.parquet", "traffic-host-2-a.parquet"]
    kept_text = b"".join(p.read_bytes() for p in loaded.iterdir())
    assert b"old-3" not in kept_text and b"new-1" in kept_text  # the expired request's text is gone from disk
    with wh.connect(path) as con:
        stored = wh.read_traffic_samples(con)
    assert stored["request_id"].to_list() == ["new-1", "new-2"]
    assert stored.row(1, named=True)["prompt"] == "the secret of new-2"
    assert stored.row(1, named=True)["cluster_weights"] == [0.5, 0.5]

    again = _materialise(instance, traffic_samples, path, directory=str(directory), retention_days=30)
    assert (again["rows_loaded"], again["rows_deleted_past_retention"], again["rows_total"]) == (0, 0, 2)
    assert (again["files_deleted_past_retention"], again["files_rewritten_past_retention"]) == (0, 0)

    shorter = _materialise(instance, traffic_samples, path, directory=str(directory), retention_days=1)
    assert (shorter["rows_deleted_past_retention"], shorter["rows_total"]) == (1, 1)
    assert [p.name for p in loaded.iterdir()] == ["traffic-host-2-a.parquet"]


def test_files_left_in_place_expire_too_and_never_load_again(instance, tmp_path):
    directory, path = tmp_path / "traffic", tmp_path / "w.duckdb"
    _write(directory / "traffic-host-1-a.parquet", [_sample("old", 40), _sample("new", 1)], TRAFFIC_SCHEMA)
    meta = _materialise(instance, traffic_samples, path, directory=str(directory), move_loaded=False)
    assert (meta["rows_loaded"], meta["rows_total"], meta["files_rewritten_past_retention"]) == (2, 1, 1)  # 30 days
    again = _materialise(instance, traffic_samples, path, directory=str(directory), move_loaded=False)
    assert (again["rows_loaded"], again["rows_deleted_past_retention"], again["rows_total"]) == (0, 0, 1)
    assert pl.read_parquet(directory / "traffic-host-1-a.parquet")["request_id"].to_list() == ["new"]


def test_a_bad_retention_fails_before_anything_is_loaded(instance, tmp_path):
    directory, path = tmp_path / "traffic", tmp_path / "w.duckdb"
    _write(directory / "traffic-host-1-a.parquet", [_sample("new", 1)], TRAFFIC_SCHEMA)
    result = dg.materialize(
        [traffic_samples],
        resources={"warehouse": WarehouseResource(path=str(path))},
        instance=instance,
        run_config={"ops": {"traffic_samples": {"config": {"directory": str(directory), "retention_days": -1}}}},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.cause.message
    assert "traffic_samples.retention_days=-1.0: must be a finite number >= 0" in failure
    assert (directory / "traffic-host-1-a.parquet").exists()
    with wh.connect(path) as con:
        assert wh.count_traffic_samples(con) == 0
