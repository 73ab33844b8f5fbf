"""Grade stored responses into the warehouse's ``grades`` with each prompt's grader."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

import warehouse as wh
from profiling.graders import get_grader

__all__ = ["grade_responses"]


def grade_responses(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None) -> int:
    """Grade every stored response not yet graded by the current version of its prompt's grader.

    Re-running grades nothing twice; a new grader version regrades its prompts. Returns grades written.
    """
    todo = wh.read_gradable(con, models)
    written = 0
    for (name,), rows in todo.group_by("grader"):
        grader = get_grader(name)
        rows = rows.filter(pl.col("graded_version").is_null() | (pl.col("graded_version") != grader.version))
        if rows.height == 0:
            continue
        scores = grader.grade_many(rows["response"].to_list(), rows["reference"].to_list())
        grades = rows.select("model", "prompt_id").with_columns(
            pl.Series("score", scores),
            pl.lit(grader.name).alias("grader"),
            pl.lit(grader.version).alias("grader_version"),
        )
        written += wh.upsert_grades(con, grades)
    return written
