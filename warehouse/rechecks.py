"""``drift_rechecks``: a suspected drift confirmed (or not) by asking an LLM some of its stored prompts again, and the
stored answers such a re-check compares: each with the grade it had before it was asked again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import polars as pl

from warehouse._tables import _query, _where, _write
from warehouse.responses import _STALE, _STALE_REQUEST, _naive_utc

#: The archive reason of the answers a re-check replaced (``warehouse.replace_answers``).
RECHECK_REASON = "drift re-check"


def record_rechecks(con: duckdb.DuckDBPyConnection, rechecks: pl.DataFrame) -> int:
    """Store re-checked cells (the columns of ``drift_rechecks``; ``checked_at`` naive UTC); one already stored is
    kept. Returns rows stored."""
    return _write(con, "drift_rechecks", rechecks, "ON CONFLICT DO NOTHING")


def read_rechecks(
    con: duckdb.DuckDBPyConnection, router_version: str | None = None, llms: Sequence[str] | None = None
) -> pl.DataFrame:
    """Every re-check, of one router version and some LLMs when given, oldest first."""
    where, params = _where({"router_version = ?": router_version, "list_contains(?, llm)": llms})
    return _query(con, f"SELECT * FROM drift_rechecks WHERE {where} ORDER BY checked_at, llm, cluster", params)


def latest_rechecks(
    con: duckdb.DuckDBPyConnection, router_version: str, llms: Sequence[str] | None = None
) -> pl.DataFrame:
    """The latest re-check of each (LLM, cluster) of ``router_version`` (what stands), by LLM and cluster."""
    where, params = _where({"router_version = ?": router_version, "list_contains(?, llm)": llms})
    return _query(
        con,
        f"""
        SELECT * FROM drift_rechecks WHERE {where}
        QUALIFY row_number() OVER (PARTITION BY llm, cluster ORDER BY checked_at DESC) = 1
        ORDER BY llm, cluster
        """,
        params,
    )


def last_recheck_at(con: duckdb.DuckDBPyConnection, llm: str) -> datetime | None:
    """When ``llm``'s latest recorded re-check was (naive UTC), or None."""
    return con.execute("SELECT max(checked_at) FROM drift_rechecks WHERE llm = ?", [llm]).fetchall()[0][0]


def read_recheck_answers(
    con: duckdb.DuckDBPyConnection, llm: str, splits: Sequence[str], since: datetime | None = None
) -> pl.DataFrame:
    """``llm``'s current graded answers on ``splits`` as a re-check sees them: ``llm, prompt_id, split, score,
    rechecked, new_score, new_cost_usd``.

    An answer asked again after ``since`` (naive UTC; its earlier answer archived with :data:`RECHECK_REASON`) is
    ``rechecked``: ``score`` is then the earlier answer's grade and ``new_score`` (null until graded) and
    ``new_cost_usd`` the current one's. Otherwise ``score`` is the current grade. Collected answers from the LLM's
    current endpoint, to the prompt's current request, only (imported ones cannot be asked again)."""
    return _query(
        con,
        f"""
        WITH redone AS (
            SELECT ga.prompt_id, ga.score,
                   row_number() OVER (PARTITION BY ga.prompt_id ORDER BY ga.archived_at) AS nth
            FROM grades_archive ga JOIN responses_archive ra USING (model, prompt_id, archived_at)
            WHERE ga.model = ? AND ra.reason = ?
              AND ga.archived_at > coalesce(CAST(? AS TIMESTAMP), '-infinity'::TIMESTAMP)
        )
        SELECT r.model AS llm, r.prompt_id, p.split,
               CASE WHEN d.prompt_id IS NULL THEN g.score ELSE d.score END AS score,
               d.prompt_id IS NOT NULL AS rechecked,
               CASE WHEN d.prompt_id IS NULL THEN NULL ELSE g.score END AS new_score,
               CASE WHEN d.prompt_id IS NULL THEN NULL ELSE r.cost_usd END AS new_cost_usd
        FROM responses r JOIN prompts p USING (prompt_id) JOIN llms l ON l.name = r.model
        LEFT JOIN grades g ON g.model = r.model AND g.prompt_id = r.prompt_id
        LEFT JOIN redone d ON d.prompt_id = r.prompt_id AND d.nth = 1
        WHERE r.model = ? AND r.source = 'collected' AND list_contains(?, p.split)
          AND NOT {_STALE} AND NOT {_STALE_REQUEST}
          AND (d.prompt_id IS NOT NULL OR g.score IS NOT NULL)
        ORDER BY r.prompt_id
        """,
        [llm, RECHECK_REASON, _naive_utc(since), llm, list(splits)],
    )
