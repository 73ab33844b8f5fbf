"""Each LLM's data checks (``llm_checks``) and the gateway's decision log (``routing_decisions``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb
import polars as pl

from warehouse._tables import _at_as, _query, _write


def record_check(con: duckdb.DuckDBPyConnection, model: str, check_name: str, passed: bool, details: str) -> None:
    """Store the latest outcome of one data check of one LLM."""
    frame = pl.DataFrame({"model": [model], "check_name": [check_name], "passed": [passed], "details": [details]})
    updates = "passed = excluded.passed, details = excluded.details, checked_at = excluded.checked_at"
    _write(con, "llm_checks", frame, f"ON CONFLICT (model, check_name) DO UPDATE SET {updates}", stamp="checked_at")


def failing_llms(con: duckdb.DuckDBPyConnection) -> list[str]:
    """LLMs whose latest outcome of any data check is a failure."""
    return _query(con, "SELECT DISTINCT model FROM llm_checks WHERE NOT passed ORDER BY model")["model"].to_list()


def read_failing_checks(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Why each LLM of :func:`failing_llms` fails: ``model, check_name, message``, one row per failing check its
    record's details name (``{check: {"message": ...}}``), else one with the record's own name and no message."""
    records = _query(
        con, "SELECT model, check_name, details FROM llm_checks WHERE NOT passed ORDER BY model, check_name"
    )
    rows = []
    for model, record, details in records.iter_rows():
        failed = _json_object(details)
        named = [(name, f.get("message", "") if isinstance(f, dict) else "") for name, f in failed.items()]
        rows += [(model, name, str(message)) for name, message in named or [(record, "")]]
    return pl.DataFrame(rows, schema={"model": pl.String, "check_name": pl.String, "message": pl.String}, orient="row")


def _json_object(text: str) -> dict:
    """``text`` parsed as a JSON object, else an empty one."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def insert_routing_decisions(con: duckdb.DuckDBPyConnection, decisions: pl.DataFrame) -> int:
    """Store routed requests by ``request_id`` (the columns of ``serving.decisions.SCHEMA``; its ``at``, naive UTC
    or aware, is stored as ``decided_at``); those already stored are kept, so loading the same files again stores
    nothing. Returns the rows newly stored."""
    decisions = _at_as(decisions, "decided_at")
    return _write(con, "routing_decisions", decisions, "ON CONFLICT DO NOTHING", stamp="loaded_at")


def read_routing_decisions(con: duckdb.DuckDBPyConnection, since: datetime | None = None) -> pl.DataFrame:
    """Stored routed requests, optionally those decided at or after ``since`` (aware, or naive UTC), sorted by
    ``decided_at`` (naive UTC)."""
    if since is None:
        return _query(con, "SELECT * FROM routing_decisions ORDER BY decided_at, request_id")
    if since.tzinfo is not None:
        since = since.astimezone(UTC).replace(tzinfo=None)
    return _query(con, "SELECT * FROM routing_decisions WHERE decided_at >= ? ORDER BY decided_at, request_id", [since])


def count_routing_decisions(con: duckdb.DuckDBPyConnection) -> int:
    """How many routed requests are stored."""
    return _query(con, "SELECT count(*) AS n FROM routing_decisions")["n"].item()
