"""What comes back from traffic: ratings of routed requests (``traffic_feedback``, every one kept, the latest of a
request standing) and the opt-in sample of traffic (``traffic_samples``: stored user text, deleted past its
retention).

Both load from the gateway's record files (their ``at`` is stored as ``rated_at`` / ``sampled_at``, naive UTC) and
keep what is stored already, so loading the same files again stores nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl

from warehouse._tables import WarehouseInputError, _at_as, _query, _where, _write
from warehouse.responses import _naive_utc

__all__ = [
    "count_traffic_feedback",
    "count_traffic_samples",
    "delete_traffic_older_than",
    "insert_traffic_feedback",
    "insert_traffic_samples",
    "read_latest_feedback",
    "read_traffic_feedback",
    "read_traffic_samples",
    "retention_cutoff",
    "unknown_request_ids",
]

_LATEST = """
    SELECT request_id, key_id, score, rated_at, source FROM traffic_feedback
    QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY rated_at DESC, feedback_id DESC) = 1
    ORDER BY request_id
"""


def insert_traffic_feedback(con: duckdb.DuckDBPyConnection, feedback: pl.DataFrame) -> int:
    """Store ratings by ``feedback_id`` (columns ``feedback_id, request_id, key_id, score, at`` or ``rated_at``,
    ``source``); ratings already stored are kept, so loading a file again stores nothing. A score must be finite
    and in [0, 1]: a bad row raises :class:`WarehouseInputError` and nothing is stored. Returns rows newly stored."""
    return _write(con, "traffic_feedback", _at_as(feedback, "rated_at"), "ON CONFLICT DO NOTHING", stamp="loaded_at")


def read_traffic_feedback(con: duckdb.DuckDBPyConnection, request_id: str | None = None) -> pl.DataFrame:
    """Every stored rating (of ``request_id`` only, when given), oldest first: the history."""
    where, params = _where({"request_id = ?": request_id})
    sql = f"SELECT * FROM traffic_feedback WHERE {where} ORDER BY rated_at, feedback_id"
    return _query(con, sql, params)


def read_latest_feedback(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The rating that stands for each rated request: its latest ``rated_at`` (of equal times, the greatest
    ``feedback_id``); columns ``request_id, key_id, score, rated_at, source``, one row per request id."""
    return _query(con, _LATEST)


def count_traffic_feedback(con: duckdb.DuckDBPyConnection) -> int:
    """How many ratings are stored (history included)."""
    return _query(con, "SELECT count(*) AS n FROM traffic_feedback")["n"].item()


def unknown_request_ids(con: duckdb.DuckDBPyConnection, request_ids: Iterable[str]) -> list[str]:
    """Those of ``request_ids`` that ``routing_decisions`` does not hold (sorted, each once): an outcome of such a
    request cannot be joined with its decision (yet: its decision file may not be loaded)."""
    ids = pl.DataFrame({"request_id": sorted(set(request_ids))}, schema={"request_id": pl.String})
    con.register("_ids", ids)
    try:
        sql = "SELECT request_id FROM _ids ANTI JOIN routing_decisions USING (request_id) ORDER BY request_id"
        return _query(con, sql)["request_id"].to_list()
    finally:
        con.unregister("_ids")


def insert_traffic_samples(con: duckdb.DuckDBPyConnection, samples: pl.DataFrame) -> int:
    """Store sampled requests by ``request_id`` (the traffic file's columns; its ``at`` as ``sampled_at``); those
    already stored are kept. Returns rows newly stored."""
    return _write(con, "traffic_samples", _at_as(samples, "sampled_at"), "ON CONFLICT DO NOTHING", stamp="loaded_at")


def read_traffic_samples(con: duckdb.DuckDBPyConnection, since: datetime | None = None) -> pl.DataFrame:
    """Stored sampled requests, optionally those sampled at or after ``since`` (aware, or naive UTC), oldest
    first."""
    where, params = ("sampled_at >= ?", [_naive_utc(since)]) if since is not None else ("TRUE", [])
    return _query(con, f"SELECT * FROM traffic_samples WHERE {where} ORDER BY sampled_at, request_id", params)


def count_traffic_samples(con: duckdb.DuckDBPyConnection) -> int:
    """How many sampled requests are stored."""
    return _query(con, "SELECT count(*) AS n FROM traffic_samples")["n"].item()


def retention_cutoff(days: float, now: datetime | None = None) -> datetime:
    """The time (naive UTC) before which a sample is past a retention of ``days`` days (finite, >= 0)."""
    if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days) or days < 0:
        raise WarehouseInputError("traffic_samples", "retention_days", days, "must be a finite number >= 0")
    return _naive_utc(now or datetime.now(UTC)) - timedelta(days=days)


def delete_traffic_older_than(con: duckdb.DuckDBPyConnection, days: float, now: datetime | None = None) -> int:
    """Delete the sampled requests (their stored text) sampled more than ``days`` days before ``now`` (default:
    the current time); returns how many were deleted."""
    cutoff = retention_cutoff(days, now)
    return con.execute("DELETE FROM traffic_samples WHERE sampled_at < ?", [cutoff]).fetchall()[0][0]
