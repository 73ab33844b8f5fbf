"""What a rollout is judged on: the decisions a champion and a challenger served or shadowed (``routing_decisions``
with migration 12's ``served_alias`` and ``shadow_*`` columns)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import polars as pl

from warehouse._tables import _query
from warehouse.responses import _naive_utc

__all__ = ["read_rollout_decisions"]

_DECISIONS = """
    SELECT request_id, decided_at, router_version, served_alias, chosen_llm, status, realised_cost_usd,
        ranked_llms, ranked_predicted_error, ranked_predicted_cost,
        shadow_version, shadow_llm, shadow_predicted_error, shadow_predicted_cost
    FROM routing_decisions
    WHERE (list_contains(?::VARCHAR[], router_version) OR list_contains(?::VARCHAR[], shadow_version))
        AND decided_at >= ?
    ORDER BY decided_at, request_id
"""


def read_rollout_decisions(
    con: duckdb.DuckDBPyConnection, versions: Sequence[str], since: datetime | None = None
) -> pl.DataFrame:
    """The decisions any of ``versions`` served or shadowed, decided at or after ``since`` (aware, or naive UTC;
    default all), oldest first: what ``router_core.rollout`` reads (``decided_at`` naive UTC)."""
    start = _naive_utc(since) if since is not None else datetime(1970, 1, 1)
    names = [str(v) for v in versions]
    return _query(con, _DECISIONS, [names, names, start])
