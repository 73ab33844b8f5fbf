"""Prompt ``embeddings``, ``cluster_maps`` and ``llm_features`` (each LLM's Psi on a cluster map)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from warehouse._tables import WarehouseInputError, _query, _write
from warehouse.db import database_path


def upsert_embeddings(
    con: duckdb.DuckDBPyConnection, embedder_id: str, content_hashes: Sequence[str], vectors: np.ndarray
) -> int:
    """Store vectors by (embedder_id, content_hash); existing ones are kept (same text, same vector)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(content_hashes):
        raise WarehouseInputError("embeddings", "vector", vectors.shape, f"need ({len(content_hashes)}, dim)")
    frame = pl.DataFrame(
        {"embedder_id": embedder_id, "content_hash": list(content_hashes), "vector": list(vectors)},
        schema={"embedder_id": pl.String, "content_hash": pl.String, "vector": pl.List(pl.Float32)},
    )
    if frame.height == 0:
        return 0
    con.register("_incoming", frame)
    try:
        return con.execute(
            "INSERT INTO embeddings SELECT embedder_id, content_hash, vector FROM _incoming ON CONFLICT DO NOTHING"
        ).fetchall()[0][0]
    finally:
        con.unregister("_incoming")


def missing_embeddings(con: duckdb.DuckDBPyConnection, embedder_id: str) -> pl.DataFrame:
    """Distinct prompt texts (content_hash, text) with no vector from ``embedder_id`` yet."""
    return _query(
        con,
        """
        SELECT content_hash, any_value(text) AS text FROM prompts p
        WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.embedder_id = ? AND e.content_hash = p.content_hash)
        GROUP BY content_hash ORDER BY content_hash
        """,
        [embedder_id],
    )


def count_embeddings(con: duckdb.DuckDBPyConnection, embedder_id: str) -> int:
    """How many vectors ``embedder_id`` has stored."""
    return _query(con, "SELECT count(*) AS n FROM embeddings WHERE embedder_id = ?", [embedder_id])["n"].item()


def read_embeddings(
    con: duckdb.DuckDBPyConnection, embedder_id: str, content_hashes: Sequence[str]
) -> dict[str, np.ndarray]:
    """Stored vectors of ``embedder_id`` for those of ``content_hashes`` that have one."""
    frame = _query(
        con,
        "SELECT content_hash, vector FROM embeddings WHERE embedder_id = ? AND list_contains(?, content_hash)",
        [embedder_id, list(content_hashes)],
    )
    return {h: np.asarray(v, dtype=np.float32) for h, v in frame.iter_rows()}


def read_prompt_vectors(
    con: duckdb.DuckDBPyConnection, embedder_id: str, splits: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Prompt ids of ``splits`` (sorted) and their vectors from ``embedder_id``; raises if any is missing."""
    frame = _query(
        con,
        """
        SELECT p.prompt_id, e.vector FROM prompts p
        LEFT JOIN embeddings e ON e.content_hash = p.content_hash AND e.embedder_id = ?
        WHERE list_contains(?, p.split) ORDER BY p.prompt_id
        """,
        [embedder_id, list(splits)],
    )
    if (missing := frame.filter(pl.col("vector").is_null())).height:
        raise WarehouseInputError("embeddings", "prompt_id", missing["prompt_id"][0], f"no vector from {embedder_id}")
    vectors = np.asarray(frame["vector"].to_list(), dtype=np.float32).reshape(frame.height, -1)
    return frame["prompt_id"].to_list(), vectors


def register_cluster_map(con: duckdb.DuckDBPyConnection, cluster_map: pl.DataFrame) -> int:
    """Record a fitted cluster map as the current one (re-registering a version makes it current again). A map
    file under the warehouse file's directory (the data home) is recorded relative to it, so a data home copied or
    moved whole reads its own map."""
    home = _database_dir(con)
    if home is not None and "path" in cluster_map.columns:
        cluster_map = cluster_map.with_columns(
            pl.col("path").map_elements(lambda p: _relative_to(p, home), return_dtype=pl.String)
        )
    updates = "path = excluded.path, created_at = excluded.created_at"
    return _write(
        con, "cluster_maps", cluster_map, f"ON CONFLICT (version) DO UPDATE SET {updates}", stamp="created_at"
    )


def latest_cluster_map(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The most recently registered cluster map as a dict (``path`` absolute), or None."""
    frame = _query(con, "SELECT * FROM cluster_maps ORDER BY created_at DESC, version LIMIT 1")
    return _map_row(con, frame)


def _map_row(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> dict | None:
    """The first row of a ``cluster_maps`` frame as a dict, its ``path`` absolute (None for no row)."""
    if frame.height == 0:
        return None
    row = frame.row(0, named=True)
    home = _database_dir(con)
    if home is not None and not Path(row["path"]).is_absolute():
        row["path"] = str(home / row["path"])
    return row


def _database_dir(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The directory of ``con``'s database file (None in memory)."""
    path = database_path(con)
    return path.resolve().parent if path is not None else None


def _relative_to(path: str, home: Path) -> str:
    """``path`` relative to ``home`` where it lies under it, else as given."""
    resolved = Path(path).resolve()
    return resolved.relative_to(home).as_posix() if resolved.is_relative_to(home) else path


def upsert_llm_features(con: duckdb.DuckDBPyConnection, features: pl.DataFrame) -> int:
    """Insert or replace Psi rows by (model, cluster_map_version)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in ("psi", "overall_error", "n_validation", "computed_at"))
    return _write(
        con,
        "llm_features",
        features,
        f"ON CONFLICT (model, cluster_map_version) DO UPDATE SET {updates}",
        stamp="computed_at",
    )


def read_llm_features(con: duckdb.DuckDBPyConnection, cluster_map_version: str) -> pl.DataFrame:
    """Psi of every LLM computed with one cluster map."""
    return _query(con, "SELECT * FROM llm_features WHERE cluster_map_version = ? ORDER BY model", [cluster_map_version])
