"""Grade stored responses into the warehouse's ``grades`` with each prompt's grader and its options."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import polars as pl

import warehouse as wh
from profiling.graders import CompleteFn, GradeContext, GradeItem, Grader, GradeResult, get_grader

__all__ = ["GradingReport", "WarehouseJudgeCache", "grade_responses", "grade_responses_report"]

#: Rows graded at a time.
CHUNK_ROWS = 256
#: Grades are written once this many seconds of grading wait (and at the end), so a long run (code, judge) keeps
#: what it finished.
WRITE_EVERY_S = 5.0
#: Failure reasons kept as examples in a report.
MAX_EXAMPLES = 5
_OPTIONAL_COLUMNS = {"grader_options": pl.String, "tests": pl.String, "prompt": pl.String}


@dataclass
class GradingReport:
    """What a grading run did. ``failed`` items were not written: they stay ungraded and the next run retries."""

    written: int = 0
    failed: int = 0
    #: Paid to judges in this run (cached verdicts cost nothing again).
    judge_cost_usd: float = 0.0
    #: Failure reason -> items (reasons are per grader and cause, e.g. "llm_judge: judge 'j': call failed").
    failures: Counter[str] = field(default_factory=Counter)
    #: A few "model/prompt_id: reason" lines.
    examples: list[str] = field(default_factory=list)

    def _fail(self, reason: str, rows: pl.DataFrame) -> None:
        self.failed += rows.height
        self.failures[reason] += rows.height
        for model, prompt_id in rows.select("model", "prompt_id").head(MAX_EXAMPLES - len(self.examples)).iter_rows():
            self.examples.append(f"{model}/{prompt_id}: {reason}")


class WarehouseJudgeCache:
    """The ``JudgeCache`` of the warehouse's ``judge_cache`` table (a key already stored is kept); a paid verdict is
    stored as soon as it comes."""

    def __init__(self, warehouse: wh.Opener) -> None:
        self.warehouse = warehouse

    def get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Stored verdict rows by key."""
        with wh.opened(self.warehouse) as con:
            return {row["key"]: row for row in wh.read_judge_cache(con, keys).iter_rows(named=True)}

    def put(self, rows: list[dict[str, Any]]) -> None:
        """Store new verdicts."""
        if rows:
            schema = {"key": pl.String, "judge": pl.String, "score": pl.Float64, "verdict": pl.String}
            with wh.opened(self.warehouse) as con:
                wh.insert_judge_cache(con, pl.DataFrame(rows, schema={**schema, "cost_usd": pl.Float64}))


def _parse_options(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    options = json.loads(text)
    if not isinstance(options, dict):
        raise ValueError(f"grader_options: expected a JSON object, got {text!r:.80}")
    return options


def _model_ids(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    llms = wh.read_llms(con).filter(pl.col("model_id").is_not_null())
    return dict(zip(llms["name"], llms["model_id"], strict=True))


def _reason(grader: str, error: str | None) -> str:
    return f"{grader}: {(error or 'no score').splitlines()[0][:160]}"


def grade_responses_report(
    warehouse: wh.Opener,
    models: Sequence[str] | None = None,
    complete: CompleteFn | None = None,
) -> GradingReport:
    """Grade every stored response not yet graded by the current version of its prompt's grader.

    Rows are grouped by (grader, grader_options), one grader per group; a row is graded when its stored
    grade's version differs from the grader's (so a changed grader version, or changed options, regrades).
    ``complete`` calls judges (``llm_judge``), whose verdicts are cached in ``judge_cache``: without it, those
    rows fail. Items a grader could not score, and groups whose grader or options are refused, are not written:
    they are counted in the report and retried by the next run. ``warehouse``: see :data:`warehouse.Opener`.
    """
    with wh.opened(warehouse) as con:
        todo = wh.read_gradable(con, models)
        model_ids = _model_ids(con)
    todo = todo.with_columns(
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in _OPTIONAL_COLUMNS.items() if name not in todo.columns
    )
    report = GradingReport()
    context: GradeContext | None = None
    pending: list[pl.DataFrame] = []
    written_at = time.monotonic()
    try:  # what was graded is written even when a later grader fails
        for (name, options_text), rows in todo.group_by("grader", "grader_options", maintain_order=True):
            try:
                grader = get_grader(name, _parse_options(options_text))
            except ValueError as exc:  # json.JSONDecodeError is one too
                report._fail(_reason(name, f"grader_options={options_text!r}: {exc}"), rows)
                continue
            rows = rows.filter(pl.col("graded_version").is_null() | (pl.col("graded_version") != grader.version))
            if rows.height == 0:
                continue
            if grader.needs_complete:
                if complete is None:
                    report._fail(_reason(name, "no complete function given to call the judge"), rows)
                    continue
                context = context or GradeContext(complete, WarehouseJudgeCache(warehouse), model_ids)
            for chunk in rows.iter_slices(CHUNK_ROWS):
                pending.append(_grade_chunk(grader, chunk, context, report))
                if time.monotonic() - written_at >= WRITE_EVERY_S:
                    _write(warehouse, pending, report)
                    written_at = time.monotonic()
    finally:
        _write(warehouse, pending, report)
    return report


def _write(warehouse: wh.Opener, pending: list[pl.DataFrame], report: GradingReport) -> None:
    """Write the ``pending`` grades (emptied) in one short write."""
    if any(frame.height for frame in pending):
        with wh.opened(warehouse) as con:
            report.written += wh.upsert_grades(con, pl.concat(pending))
    pending.clear()


def _grade_chunk(
    grader: Grader, rows: pl.DataFrame, context: GradeContext | None, report: GradingReport
) -> pl.DataFrame:
    """The grades of ``rows`` that ``grader`` scored (the rest are counted as failures in ``report``)."""
    items = [
        GradeItem(r["response"], r["reference"], r["prompt"], r["tests"])
        for r in rows.select("response", "reference", "prompt", "tests").iter_rows(named=True)
    ]
    results: list[GradeResult] = grader.grade_items(items, context)
    report.judge_cost_usd += sum(r.judge_cost_usd or 0.0 for r in results if not r.cached)
    scored = pl.Series([r.score is not None for r in results], dtype=pl.Boolean)
    reasons = pl.Series("reason", [None if r.score is not None else _reason(grader.name, r.error) for r in results])
    failed = rows.with_columns(reasons.cast(pl.String)).filter(~scored)
    for (reason,), group in failed.group_by("reason", maintain_order=True):
        report._fail(reason, group)
    kept = [r for r in results if r.score is not None]
    return (
        rows.filter(scored)
        .select("model", "prompt_id")
        .with_columns(
            pl.Series("score", [r.score for r in kept], dtype=pl.Float64),
            pl.lit(grader.name).alias("grader"),
            pl.lit(grader.version).alias("grader_version"),
            pl.Series("judge", [r.judge for r in kept], dtype=pl.String),
            pl.Series("judge_cost_usd", [r.judge_cost_usd for r in kept], dtype=pl.Float64),
        )
    )


def grade_responses(
    warehouse: wh.Opener,
    models: Sequence[str] | None = None,
    complete: CompleteFn | None = None,
) -> int:
    """``grade_responses_report(...).written``: the grades written. Re-running grades nothing twice."""
    return grade_responses_report(warehouse, models, complete).written
