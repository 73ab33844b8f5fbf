"""What the coverage of the validation set is measured with: one router version's decisions and sampled traffic,
and the cluster map a version was built on."""

from __future__ import annotations

import duckdb
import polars as pl

from warehouse._tables import _query
from warehouse.features import _map_row

__all__ = ["cluster_map_by_version", "read_decision_weights", "read_sampled_traffic"]


def read_decision_weights(con: duckdb.DuckDBPyConnection, router_version: str) -> pl.DataFrame:
    """``request_id, cluster_weights`` of the decisions ``router_version`` made with cluster weights (requests for
    a named model have none), oldest first."""
    sql = """
        SELECT request_id, cluster_weights FROM routing_decisions
        WHERE router_version = ? AND cluster_weights IS NOT NULL ORDER BY decided_at, request_id
    """
    return _query(con, sql, [router_version])


def read_sampled_traffic(con: duckdb.DuckDBPyConnection, router_version: str) -> pl.DataFrame:
    """The sampled requests (stored user text) ``router_version`` routed with cluster weights and a prompt: columns
    ``request_id, sampled_at, prompt, messages, embedder_id, cluster_weights``, oldest first."""
    sql = """
        SELECT request_id, sampled_at, prompt, messages, embedder_id, cluster_weights FROM traffic_samples
        WHERE router_version = ? AND cluster_weights IS NOT NULL AND prompt IS NOT NULL
        ORDER BY sampled_at, request_id
    """
    return _query(con, sql, [router_version])


def cluster_map_by_version(con: duckdb.DuckDBPyConnection, version: str) -> dict | None:
    """The registered cluster map ``version`` as a dict (``path`` absolute), or None."""
    return _map_row(con, _query(con, "SELECT * FROM cluster_maps WHERE version = ?", [version]))
