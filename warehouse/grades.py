"""``grades``, the judge's verdict cache (``judge_cache``) and the outcomes router_core learns from."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

from warehouse._tables import _query, _where, _write


def upsert_grades(con: duckdb.DuckDBPyConnection, grades: pl.DataFrame) -> int:
    """Insert or replace grades by (model, prompt_id): regrading with a new grader version updates them."""
    updates = ", ".join(
        f"{c} = excluded.{c}" for c in ("score", "grader", "grader_version", "judge", "judge_cost_usd", "graded_at")
    )
    return _write(
        con,
        "grades",
        grades,
        f"ON CONFLICT (model, prompt_id) DO UPDATE SET {updates}",
        stamp="graded_at",
    )


def read_gradable(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None) -> pl.DataFrame:
    """Collected responses with what grading needs: model, prompt_id, response, reference, grader,
    grader_options, tests, prompt (the user message asked), and the ``graded_version`` of the grade already stored
    by the prompt's grader (null if none). Imported answers keep their imported scores and are not listed."""
    where, params = ("AND list_contains(?, r.model)", [list(models)]) if models is not None else ("", [])
    return _query(
        con,
        f"""
        SELECT r.model, r.prompt_id, r.response, p.reference, p.grader, p.grader_options, p.tests, p.prompt,
               g.grader_version AS graded_version
        FROM responses r JOIN prompts p USING (prompt_id)
        LEFT JOIN grades g ON g.model = r.model AND g.prompt_id = r.prompt_id AND g.grader = p.grader
        WHERE r.source = 'collected' AND r.response IS NOT NULL {where} ORDER BY r.model, r.prompt_id
        """,
        params,
    )


def read_grades(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """All grades."""
    return _query(con, "SELECT * FROM grades ORDER BY model, prompt_id")


def read_outcomes(
    con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None, splits: Sequence[str] | None = None
) -> pl.DataFrame:
    """router_core's outcomes frame (model, prompt_id, score), optionally of some models and splits."""
    where, params = _where({"list_contains(?, g.model)": models, "list_contains(?, p.split)": splits})
    return _query(
        con,
        f"SELECT g.model, g.prompt_id, g.score FROM grades g JOIN prompts p USING (prompt_id) "
        f"WHERE {where} ORDER BY g.model, g.prompt_id",
        params,
    )


def read_judge_cache(con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> pl.DataFrame:
    """Cached judge verdicts (key, judge, score, verdict, cost_usd) of those of ``keys`` that have one."""
    return _query(
        con,
        "SELECT key, judge, score, verdict, cost_usd FROM judge_cache WHERE list_contains(?, key) ORDER BY key",
        [list(keys)],
    )


def insert_judge_cache(con: duckdb.DuckDBPyConnection, verdicts: pl.DataFrame) -> int:
    """Store judge verdicts by ``key`` (key, judge, score, verdict, cost_usd); cached ones are kept."""
    return _write(con, "judge_cache", verdicts, "ON CONFLICT DO NOTHING", stamp="created_at")
