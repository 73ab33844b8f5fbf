"""Open the warehouse: one DuckDB file, migrated forward on open."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from warehouse.schema import MIGRATIONS

__all__ = ["SchemaError", "connect", "default_path", "schema_version"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class SchemaError(RuntimeError):
    """The database was written by a newer version of this project."""


def default_path() -> Path:
    """``$UNIROUTE_WAREHOUSE``, else ``$UNIROUTE_DATA_HOME/warehouse.duckdb`` (default ``<project>/data``)."""
    if path := os.environ.get("UNIROUTE_WAREHOUSE"):
        return Path(path)
    return Path(os.environ.get("UNIROUTE_DATA_HOME", PROJECT_ROOT / "data")) / "warehouse.duckdb"


def connect(path: str | os.PathLike[str] | None = None) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the warehouse at ``path`` and apply pending migrations."""
    path = Path(path) if path is not None else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        _migrate(con)
    except BaseException:
        con.close()
        raise
    return con


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest migration applied to ``con``."""
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0]


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
    ).fetchall()
    current = schema_version(con)
    if current > len(MIGRATIONS):
        raise SchemaError(f"schema version {current} is newer than this code's {len(MIGRATIONS)}: upgrade uniroute")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        con.begin()
        try:
            con.execute(MIGRATIONS[version - 1]).fetchall()
            con.execute("INSERT INTO schema_migrations VALUES (?, now())", [version]).fetchall()
            con.commit()
        except BaseException:
            con.rollback()
            raise
