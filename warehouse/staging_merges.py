"""Staged collections merged into ``responses`` and ``collection_failures``, recorded in ``staging_merges``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import polars as pl

from warehouse._tables import WarehouseInputError, _prepare, _query


def merge_staged(
    con: duckdb.DuckDBPyConnection, file: str, answers: pl.DataFrame, failures: pl.DataFrame
) -> dict[str, int] | None:
    """Store one staged file's answers and failures and record ``file`` in ``staging_merges``, in ONE transaction;
    None, and nothing written, when ``file`` is recorded already (merged before: a crash after the commit and
    before the file was moved aside, or the same file merged twice).

    ``answers`` has the columns of :func:`insert_responses` plus ``collected_at`` (naive UTC: when the answer came;
    null: now); ``failures`` those of :func:`record_failures` plus ``last_failed_at``. As those functions do, an
    answer to a pair stored already is skipped (responses are insert-only) and clears the pair's failures, and a
    failure adds its attempts to the pair's; a failure of a pair that has an answer (stored now or before) is
    dropped. Returns ``{"answers", "answers_stored", "failures", "failures_recorded"}``.
    """
    return merge_staged_files(con, [(file, answers, failures)])[0]


def merge_staged_files(
    con: duckdb.DuckDBPyConnection, files: Sequence[tuple[str, pl.DataFrame, pl.DataFrame]]
) -> list[dict[str, int] | None]:
    """:func:`merge_staged` for ``(file, answers, failures)`` of ``files`` given newest first, all in ONE
    transaction of a few statements, however many files; a file recorded already (or named twice) gets None and
    adds nothing. Where files answer the same pair the first file's answer is the one stored; failures of a pair
    left unanswered add up their attempts, and the first file's error is the last one. A bad file or one that
    violates a table constraint rolls everything back and raises; merge files one at a time to learn which."""
    now = datetime.now(UTC).replace(tzinfo=None)
    con.begin()
    try:
        recorded = {
            row[0]
            for row in con.execute(
                "SELECT file FROM staging_merges WHERE file IN (SELECT unnest(?))", [[f for f, _, _ in files]]
            ).fetchall()
        }
        todo: dict[int, tuple[str, pl.DataFrame, pl.DataFrame]] = {}
        for order, (file, answers, failures) in enumerate(files):
            if file not in recorded:
                recorded.add(file)
                todo[order] = (file, answers, failures)
        counts = _merge_batch(con, todo, now) if todo else {}
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return [counts.get(order) for order in range(len(files))]


def _merge_batch(
    con: duckdb.DuckDBPyConnection, todo: dict[int, tuple[str, pl.DataFrame, pl.DataFrame]], now: datetime
) -> dict[int, dict[str, int]]:
    """The files of ``todo`` (by their place in the batch, lower first) inside the caller's transaction."""
    answers = _staged_rows(
        "responses",
        [
            (
                o,
                a.with_columns(source=pl.lit("collected"))
                if isinstance(a, pl.DataFrame) and "source" not in a.columns
                else a,
            )
            for o, (_, a, _) in todo.items()
        ],
        "collected_at",
        now,
    )
    failures = _staged_rows("collection_failures", [(o, f) for o, (_, _, f) in todo.items()], "last_failed_at", now)
    answer_columns = ", ".join(c for c in answers.columns if c != "_order")
    kept = [c for c in failures.columns if c not in ("_order", "model", "prompt_id", "attempts")]
    con.register(
        "_staged_answers", answers.sort("_order").unique(["model", "prompt_id"], keep="first", maintain_order=True)
    )
    con.register("_staged_failures", failures)
    new = "NOT EXISTS (SELECT 1 FROM responses r WHERE r.model = s.model AND r.prompt_id = s.prompt_id)"
    try:
        stored = dict(
            con.execute(f"SELECT _order, count(*) FROM _staged_answers s WHERE {new} GROUP BY _order").fetchall()
        )
        con.execute(
            f"INSERT INTO responses ({answer_columns}) SELECT {answer_columns} FROM _staged_answers "
            "ON CONFLICT DO NOTHING"
        ).fetchall()
        con.execute(
            "DELETE FROM collection_failures f USING _staged_answers a "
            "WHERE f.model = a.model AND f.prompt_id = a.prompt_id"
        ).fetchall()
        recorded = dict(
            con.execute(f"SELECT _order, count(*) FROM _staged_failures s WHERE {new} GROUP BY _order").fetchall()
        )
        con.execute(
            f"""
            INSERT INTO collection_failures (model, prompt_id, attempts, {", ".join(kept)})
            SELECT model, prompt_id, sum(attempts), {", ".join(f"arg_min({c}, _order)" for c in kept)}
            FROM _staged_failures s WHERE {new} GROUP BY model, prompt_id
            ON CONFLICT (model, prompt_id) DO UPDATE SET attempts = collection_failures.attempts + excluded.attempts,
                {", ".join(f"{c} = excluded.{c}" for c in kept)}
            """
        ).fetchall()
        counts = {
            order: {
                "answers": a.height,
                "answers_stored": stored.get(order, 0),
                "failures": f.height,
                "failures_recorded": recorded.get(order, 0),
            }
            for order, (_, a, f) in todo.items()
        }
        merges = pl.DataFrame(
            {
                "file": [todo[o][0] for o in counts],
                "merged_at": now,
                "answers": [c["answers"] for c in counts.values()],
                "answers_stored": [c["answers_stored"] for c in counts.values()],
                "failures": [c["failures"] for c in counts.values()],
            }
        )
        con.register("_staged_merges", merges)
        con.execute(
            "INSERT INTO staging_merges SELECT file, merged_at, answers, answers_stored, failures FROM _staged_merges"
        ).fetchall()
    except duckdb.ConstraintException as exc:
        files = ", ".join(file for file, _, _ in todo.values())
        raise WarehouseInputError("staging_merges", "file", files, f"violates a table constraint: {exc}") from exc
    finally:
        for name in ("_staged_answers", "_staged_failures", "_staged_merges"):
            con.unregister(name)
    return counts


def _staged_rows(table: str, frames: list[tuple[int, pl.DataFrame]], time: str, now: datetime) -> pl.DataFrame:
    """The staged ``frames`` of ``table`` as one checked frame with each row's file (``_order``) and ``time``
    (null or missing: ``now``)."""
    for _, frame in frames:
        if not isinstance(frame, pl.DataFrame):
            raise WarehouseInputError(table, "frame", type(frame).__name__, "must be a polars.DataFrame")
    try:
        rows = pl.concat(
            [frame.with_columns(_order=pl.lit(order, pl.Int32)) for order, frame in frames], how="diagonal_relaxed"
        )
    except (pl.exceptions.SchemaError, pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise WarehouseInputError(table, "frame", "staged files", f"columns do not combine: {exc}") from exc
    return _with_time(_prepare(table, rows, carry=["_order"]), rows, time, now)


def _with_time(prepared: pl.DataFrame, frame: pl.DataFrame, column: str, default: datetime) -> pl.DataFrame:
    """``prepared`` with ``frame``'s ``column`` (a naive UTC time; missing or null: ``default``)."""
    if column in frame.columns and frame.height:
        try:
            times = frame[column].cast(pl.Datetime("us"), strict=True)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise WarehouseInputError("staging", column, str(frame[column].dtype), "cannot be read as a time") from exc
        return prepared.with_columns(times.fill_null(default).alias(column))
    return prepared.with_columns(pl.lit(default, dtype=pl.Datetime("us")).alias(column))


def read_staging_merges(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Staged files merged so far (file, merged_at, answers, answers_stored, failures), in merge order."""
    return _query(con, "SELECT * FROM staging_merges ORDER BY merged_at, file")
