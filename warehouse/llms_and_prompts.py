"""The catalog's ``llms`` table, ``datasets`` and ``prompts``: who can be asked what."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

from warehouse._tables import _COLUMNS, WarehouseInputError, _query, _where, _write
from warehouse.names import llm_name_problem


def upsert_llms(con: duckdb.DuckDBPyConnection, llms: pl.DataFrame) -> int:
    """Insert or update catalog entries by ``name``; ``added_at`` is kept from the first insert."""
    return _write_llms(con, llms)


def sync_llms(con: duckdb.DuckDBPyConnection, llms: pl.DataFrame) -> int:
    """Make the catalog table match ``llms``: upsert them and deactivate every LLM not listed (kept, not deleted)."""
    return _write_llms(con, llms, after="UPDATE llms SET active = false WHERE name NOT IN (SELECT name FROM _incoming)")


def _write_llms(con: duckdb.DuckDBPyConnection, llms: pl.DataFrame, after: str | None = None) -> int:
    if isinstance(llms, pl.DataFrame) and llms.schema.get("name") == pl.String:  # else _prepare names the problem
        for name in llms["name"].drop_nulls():
            if (problem := llm_name_problem(name)) is not None:
                raise WarehouseInputError("llms", "name", name, f"not a valid LLM name: {problem}")
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS["llms"] if c != "name")
    return _write(con, "llms", llms, f"ON CONFLICT (name) DO UPDATE SET {updates}", stamp="added_at", after=after)


def read_llms(con: duckdb.DuckDBPyConnection, active_only: bool = False) -> pl.DataFrame:
    """The catalog, one row per LLM, sorted by name."""
    where = "WHERE active" if active_only else ""
    return _query(con, f"SELECT * FROM llms {where} ORDER BY name")


# ---- datasets and prompts ---------------------------------------------------------------------------------
def upsert_dataset(con: duckdb.DuckDBPyConnection, dataset: pl.DataFrame) -> int:
    """Insert or update datasets by ``name``: name, spec (JSON), template_version, collectable, source."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS["datasets"] if c != "name")
    return _write(con, "datasets", dataset, f"ON CONFLICT (name) DO UPDATE SET {updates}", stamp="updated_at")


def read_datasets(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Registered datasets with their prompt counts, sorted by name."""
    return _query(
        con,
        "SELECT d.*, (SELECT count(*) FROM prompts p WHERE p.dataset = d.name) AS prompts "
        "FROM datasets d ORDER BY name",
    )


def upsert_prompts(con: duckdb.DuckDBPyConnection, prompts: pl.DataFrame) -> int:
    """Insert or update prompts by ``prompt_id``. A stored prompt keeps its split: splits never move, so a
    re-import can never move a cluster map's training prompts into a router's test set."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS["prompts"] if c not in ("prompt_id", "split"))
    return _write(con, "prompts", prompts, f"ON CONFLICT (prompt_id) DO UPDATE SET {updates}")


def read_prompts(
    con: duckdb.DuckDBPyConnection, dataset: str | None = None, splits: Sequence[str] | None = None
) -> pl.DataFrame:
    """Prompts, optionally of one ``dataset`` and some ``splits``, sorted by prompt_id."""
    where, params = _where({"dataset = ?": dataset, "list_contains(?, split)": splits})
    return _query(con, f"SELECT * FROM prompts WHERE {where} ORDER BY prompt_id", params)


def read_splits(con: duckdb.DuckDBPyConnection, prompt_ids: Sequence[str]) -> dict[str, str]:
    """The stored split of those of ``prompt_ids`` already in the warehouse."""
    frame = _query(con, "SELECT prompt_id, split FROM prompts WHERE list_contains(?, prompt_id)", [list(prompt_ids)])
    return dict(frame.iter_rows())
