"""Read and write the warehouse tables: Polars frames in, Polars frames out. The only SQL in the project.

Writers validate and cast the incoming frame, then run one ``INSERT ... ON CONFLICT`` in a transaction: a bad
frame raises :class:`WarehouseInputError` and changes nothing. Responses are insert-only: an answer already
stored is never overwritten, so re-running a collection never re-pays for it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from warehouse.names import llm_name_problem

__all__ = [
    "WarehouseInputError",
    "archive_pairs",
    "archive_responses",
    "count_answers",
    "count_embeddings",
    "count_routing_decisions",
    "expected_count",
    "failing_llms",
    "insert_judge_cache",
    "insert_responses",
    "insert_routing_decisions",
    "latest_cluster_map",
    "merge_staged",
    "missing_embeddings",
    "pending_counts",
    "pending_pairs",
    "read_archived_outcomes",
    "read_cost_basis",
    "read_costs",
    "read_datasets",
    "read_embeddings",
    "read_failing_checks",
    "read_failures",
    "read_gradable",
    "read_grades",
    "read_judge_cache",
    "read_llm_features",
    "read_llms",
    "read_outcomes",
    "read_prompt_vectors",
    "read_prompts",
    "read_query_costs",
    "read_responses",
    "read_routing_decisions",
    "read_splits",
    "read_staging_merges",
    "record_check",
    "record_failures",
    "register_cluster_map",
    "sync_llms",
    "upsert_dataset",
    "upsert_embeddings",
    "upsert_grades",
    "upsert_llm_features",
    "upsert_llms",
    "upsert_prompts",
]


class WarehouseInputError(ValueError):
    """A frame to be written is missing a column or holds a value the table refuses; names both."""

    def __init__(self, table: str, field: str, value: object, problem: str) -> None:
        self.table, self.field, self.value = table, field, value
        super().__init__(f"{table}.{field}={value!r}: {problem}")


# Column -> dtype of each table's writable frame; None marks columns that may be absent (filled with null).
_COLUMNS: dict[str, dict[str, tuple[pl.DataType, bool]]] = {
    "llms": {
        "name": (pl.String, True),
        "base_url": (pl.String, False),  # null: import-only (results, no endpoint)
        "model_id": (pl.String, True),
        "api_key_env": (pl.String, False),
        "usd_per_mtok_in": (pl.Float64, False),  # null: costs come from per-query USD in the data
        "usd_per_mtok_out": (pl.Float64, False),
        "usd_per_query": (pl.Float64, False),  # null: priced per token, or by the data
        "max_concurrency": (pl.Int32, True),
        "requests_per_minute": (pl.Int32, False),
        "active": (pl.Boolean, True),
    },
    "prompts": {
        "prompt_id": (pl.String, True),
        "dataset": (pl.String, True),
        "split": (pl.String, True),
        "category": (pl.String, False),
        "text": (pl.String, True),
        "prompt": (pl.String, True),
        "reference": (pl.String, False),
        "grader": (pl.String, True),
        "content_hash": (pl.String, True),
        "messages": (pl.String, False),  # JSON chat messages; null: one user message, ``prompt``
        "request_params": (pl.String, False),  # JSON
        "request_hash": (pl.String, False),
        "grader_options": (pl.String, False),  # JSON
        "tests": (pl.String, False),
        "metadata": (pl.String, False),  # JSON
    },
    "responses": {
        "model": (pl.String, True),
        "prompt_id": (pl.String, True),
        "response": (pl.String, False),  # null: an imported score without the answer's text
        "finish_reason": (pl.String, False),
        "prompt_tokens": (pl.Int32, False),
        "completion_tokens": (pl.Int32, False),
        "latency_ms": (pl.Float64, False),
        "cost_usd": (pl.Float64, False),
        "prompt_hash": (pl.String, True),
        "run_id": (pl.String, True),
        "base_url": (pl.String, False),  # the endpoint that answered (null: unknown, taken as the current one)
        "model_id": (pl.String, False),
        "request_hash": (pl.String, False),  # the request answered; null: unknown (taken as current) or imported
        "template_version": (pl.String, False),
        "request_params": (pl.String, False),
        "source": (pl.String, False),  # "collected" (default) or "imported"
        "tokens_estimated": (pl.Boolean, False),  # true: token counts estimated from the text (null: false)
    },
    "grades": {
        "model": (pl.String, True),
        "prompt_id": (pl.String, True),
        "score": (pl.Float64, True),
        "grader": (pl.String, True),
        "grader_version": (pl.String, True),
        "judge": (pl.String, False),  # llm_judge: the judge LLM and model id
        "judge_cost_usd": (pl.Float64, False),
    },
    "datasets": {
        "name": (pl.String, True),
        "spec": (pl.String, True),
        "template_version": (pl.String, True),
        "collectable": (pl.Boolean, True),
        "source": (pl.String, False),
    },
    "judge_cache": {
        "key": (pl.String, True),
        "judge": (pl.String, True),
        "score": (pl.Float64, True),
        "verdict": (pl.String, False),
        "cost_usd": (pl.Float64, False),
    },
    "cluster_maps": {
        "version": (pl.String, True),
        "kind": (pl.String, True),
        "n_clusters": (pl.Int32, True),
        "embedder_id": (pl.String, True),
        "training_llms": (pl.List(pl.String), True),
        "n_train_prompts": (pl.Int32, True),
        "path": (pl.String, True),
    },
    "llm_features": {
        "model": (pl.String, True),
        "cluster_map_version": (pl.String, True),
        "psi": (pl.List(pl.Float64), True),
        "overall_error": (pl.Float64, True),
        "n_validation": (pl.Int32, True),
    },
    "llm_checks": {
        "model": (pl.String, True),
        "check_name": (pl.String, True),
        "passed": (pl.Boolean, True),
        "details": (pl.String, True),
    },
    "collection_failures": {
        "model": (pl.String, True),
        "prompt_id": (pl.String, True),
        "attempts": (pl.Int32, True),
        "last_error_class": (pl.String, True),
        "run_id": (pl.String, True),
    },
    "routing_decisions": {
        "request_id": (pl.String, True),
        "decided_at": (pl.Datetime("us"), True),  # UTC; the decision log's ``at``
        "key_id": (pl.String, False),
        "prompt_hash": (pl.String, False),
        "router_version": (pl.String, False),
        "model_requested": (pl.String, False),
        "chosen_llm": (pl.String, False),
        "cost_weight": (pl.Float64, False),
        "budget_kind": (pl.String, True),  # max_cost_per_query, min_accuracy, cost_weight or none
        "budget_value": (pl.Float64, False),
        "candidates": (pl.List(pl.String), False),
        "predicted_error": (pl.String, False),  # JSON {llm: e}
        "predicted_cost": (pl.String, False),  # JSON {llm: usd}
        "attempts": (pl.String, False),  # JSON [{llm, try_number, status, error, seconds}]
        "status": (pl.Int32, True),
        "prompt_tokens": (pl.Int32, False),
        "completion_tokens": (pl.Int32, False),
        "realised_cost_usd": (pl.Float64, False),
        "latency_ms": (pl.Float64, False),
        "stream": (pl.Boolean, False),
    },
}
# Domain rules checked before writing, so an error names the column and the value (the tables' CHECKs stay).
_RULES: dict[str, list[tuple[str, pl.Expr, str]]] = {
    "llms": [
        # is_between: NaN and infinity fall outside (NaN >= 0 holds in polars' order)
        (c, pl.col(c).is_null() | pl.col(c).is_between(0, 1e300), "must be finite and >= 0")
        for c in ("usd_per_mtok_in", "usd_per_mtok_out", "usd_per_query")
    ]
    + [
        ("max_concurrency", pl.col("max_concurrency") > 0, "must be > 0"),
        ("requests_per_minute", pl.col("requests_per_minute").is_null() | (pl.col("requests_per_minute") > 0), "> 0"),
    ],
    "prompts": [("split", pl.col("split").is_in(["train", "validation", "test"]), "must be train/validation/test")],
    "responses": [
        (c, pl.col(c).is_null() | pl.col(c).is_between(0, 1e300), "must be finite and >= 0")
        for c in ("prompt_tokens", "completion_tokens", "latency_ms", "cost_usd")
    ]
    + [("source", pl.col("source").is_in(["collected", "imported"]), "must be 'collected' or 'imported'")],
    "grades": [
        ("score", pl.col("score").is_between(0, 1) & pl.col("score").is_not_nan(), "must be in [0, 1]"),
        ("judge_cost_usd", pl.col("judge_cost_usd").is_null() | (pl.col("judge_cost_usd") >= 0), "must be >= 0"),
    ],
    "datasets": [],
    "judge_cache": [("score", pl.col("score").is_between(0, 1) & pl.col("score").is_not_nan(), "must be in [0, 1]")],
    "collection_failures": [("attempts", pl.col("attempts") > 0, "must be > 0")],
    "llm_checks": [],
    "cluster_maps": [("n_clusters", pl.col("n_clusters") > 0, "must be > 0")],
    "llm_features": [("overall_error", pl.col("overall_error").is_between(0, 1), "must be in [0, 1]")],
    "routing_decisions": [
        (
            "budget_kind",
            pl.col("budget_kind").is_in(["max_cost_per_query", "min_accuracy", "cost_weight", "none"]),
            "must be max_cost_per_query, min_accuracy, cost_weight or none",
        ),
        ("status", pl.col("status").is_between(100, 599), "must be an HTTP status"),
    ]
    + [
        (c, pl.col(c).is_null() | (pl.col(c) >= 0), "must be >= 0")
        for c in ("prompt_tokens", "completion_tokens", "realised_cost_usd", "latency_ms")
    ],
}
_KEYS = {
    "llms": ["name"],
    "prompts": ["prompt_id"],
    "responses": ["model", "prompt_id"],
    "grades": ["model", "prompt_id"],
    "collection_failures": ["model", "prompt_id"],
    "cluster_maps": ["version"],
    "llm_checks": ["model", "check_name"],
    "llm_features": ["model", "cluster_map_version"],
    "datasets": ["name"],
    "judge_cache": ["key"],
    "routing_decisions": ["request_id"],
}


def _prepare(table: str, frame: pl.DataFrame, carry: Sequence[str] = ()) -> pl.DataFrame:
    """Select, cast and check ``frame`` for ``table``; raise naming the first bad column and value. The ``carry``
    columns are kept as they are and join the key: rows may repeat a key with different ``carry`` values."""
    if not isinstance(frame, pl.DataFrame):
        raise WarehouseInputError(table, "frame", type(frame).__name__, "must be a polars.DataFrame")
    columns = {**_COLUMNS[table], **{name: (frame.schema.get(name, pl.Int32), True) for name in carry}}
    out = []
    for name, (dtype, required) in columns.items():
        if name not in frame.columns:
            if required:
                raise WarehouseInputError(table, name, None, f"missing column (have {frame.columns})")
            out.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        try:
            out.append(frame[name].cast(dtype, strict=True))
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise WarehouseInputError(table, name, str(frame[name].dtype), f"cannot be read as {dtype}") from exc
        if required and (nulls := frame.filter(pl.col(name).is_null())).height:
            raise WarehouseInputError(table, name, None, f"null in a required column (row {nulls.row(0)})")
    prepared = frame.select(out) if frame.height else pl.DataFrame(schema={n: d for n, (d, _) in columns.items()})
    for column, rule, problem in _RULES[table]:
        if (bad := prepared.filter(~rule.fill_null(False))).height:
            raise WarehouseInputError(table, column, bad[column][0], problem)
    keys = [*_KEYS[table], *carry]
    dup = prepared.filter(prepared.select(keys).is_duplicated())
    if dup.height:
        key = _KEYS[table]
        raise WarehouseInputError(table, "/".join(key), dup.select(key).row(0), "duplicate key in one write")
    return prepared


def _write(
    con: duckdb.DuckDBPyConnection,
    table: str,
    frame: pl.DataFrame,
    conflict: str,
    stamp: str | None = None,
    after: str | None = None,
) -> int:
    """INSERT the checked frame with ``conflict`` handling in one transaction; returns rows written.

    ``stamp`` names a timestamp column set to now (UTC); ``after`` is SQL run in the same transaction, with the
    frame visible as ``_incoming``.
    """
    prepared = _prepare(table, frame)
    if prepared.height == 0 and after is None:
        return 0
    if stamp:
        prepared = prepared.with_columns(pl.lit(datetime.now(UTC).replace(tzinfo=None)).alias(stamp))
    names = ", ".join(prepared.columns)
    con.register("_incoming", prepared)
    con.begin()
    try:
        count = con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _incoming {conflict}").fetchall()[0][0]
        if after:
            con.execute(after).fetchall()
        con.commit()
    except duckdb.ConstraintException as exc:
        con.rollback()
        raise WarehouseInputError(table, "row", str(exc).splitlines()[0], "violates a table constraint") from exc
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister("_incoming")
    return count


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence | None = None) -> pl.DataFrame:
    return con.sql(sql, params=list(params) if params else None).pl()


# ---- catalog ---------------------------------------------------------------------------------------------
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
    clauses, params = ["TRUE"], []
    if dataset is not None:
        clauses.append("dataset = ?")
        params.append(dataset)
    if splits is not None:
        clauses.append("list_contains(?, split)")
        params.append(list(splits))
    return _query(con, f"SELECT * FROM prompts WHERE {' AND '.join(clauses)} ORDER BY prompt_id", params)


def read_splits(con: duckdb.DuckDBPyConnection, prompt_ids: Sequence[str]) -> dict[str, str]:
    """The stored split of those of ``prompt_ids`` already in the warehouse."""
    frame = _query(con, "SELECT prompt_id, split FROM prompts WHERE list_contains(?, prompt_id)", [list(prompt_ids)])
    return dict(frame.iter_rows())


# ---- responses and failures ------------------------------------------------------------------------------
#: An answer from an endpoint or model id other than the catalog's (``r``: responses, ``l``: llms).
_STALE = "(r.base_url IS NOT NULL AND (r.base_url <> l.base_url OR r.model_id <> l.model_id))"
#: An answer to another request than the prompt's current one (template, messages or parameters changed).
_STALE_REQUEST = "(r.request_hash IS NOT NULL AND p.request_hash IS NOT NULL AND r.request_hash <> p.request_hash)"
#: Whether LLM ``l`` can be asked prompt ``p``: it has an endpoint and the dataset is collectable.
_COLLECTABLE = (
    "(l.base_url IS NOT NULL AND coalesce((SELECT d.collectable FROM datasets d WHERE d.name = p.dataset), true))"
)
#: Prompts ``p`` expected of LLM ``l``: collectable ones, and those of any dataset it has answers in (imported).
_EXPECTED = (
    f"({_COLLECTABLE} OR EXISTS (SELECT 1 FROM responses r2 JOIN prompts p2 USING (prompt_id) "
    "WHERE r2.model = l.name AND p2.dataset = p.dataset))"
)


def insert_responses(con: duckdb.DuckDBPyConnection, responses: pl.DataFrame) -> int:
    """Store new responses; pairs already stored are left untouched. Clears their recorded failures.

    ``source`` defaults to ``"collected"``. Returns the number of responses newly stored.
    """
    if isinstance(responses, pl.DataFrame) and "source" not in responses.columns:
        responses = responses.with_columns(pl.lit("collected").alias("source"))
    return _write(
        con,
        "responses",
        responses,
        "ON CONFLICT DO NOTHING",
        stamp="collected_at",
        after="DELETE FROM collection_failures f USING _incoming d "
        "WHERE f.model = d.model AND f.prompt_id = d.prompt_id",
    )


def read_responses(
    con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None, splits: Sequence[str] | None = None
) -> pl.DataFrame:
    """Stored responses, optionally of some models and prompt splits."""
    clauses, params = ["TRUE"], []
    if models is not None:
        clauses.append("list_contains(?, r.model)")
        params.append(list(models))
    if splits is not None:
        clauses.append("r.prompt_id IN (SELECT prompt_id FROM prompts WHERE list_contains(?, split))")
        params.append(list(splits))
    return _query(con, f"SELECT r.* FROM responses r WHERE {' AND '.join(clauses)} ORDER BY model, prompt_id", params)


#: Answers held outside the warehouse (staged, not merged yet) that :func:`pending_pairs` can take into account.
_STAGED_COLUMNS = {
    "model": pl.String,
    "prompt_id": pl.String,
    "request_hash": pl.String,
    "base_url": pl.String,
    "model_id": pl.String,
    "collected_at": pl.Datetime("us"),
}


def pending_pairs(
    con: duckdb.DuckDBPyConnection,
    models: Sequence[str],
    splits: Sequence[str] = ("validation",),
    staged: pl.DataFrame | None = None,
    staged_since: datetime | None = None,
) -> pl.DataFrame:
    """What to ask: ``models`` x prompts in ``splits`` with no stored response, where the LLM has an endpoint
    and the prompt's dataset is collectable. Columns model, prompt_id, prompt, messages, request_params,
    request_hash, template_version (null where the dataset is not registered).

    ``staged``: answers held elsewhere, not stored yet (model, prompt_id, request_hash, base_url, model_id,
    collected_at: ``profiling.staging.staged_pairs``); a pair with a current one is not pending. A staged answer
    is current as a stored one is (see :func:`pending_counts`): to the prompt's current request, from the LLM's
    current endpoint and model id, and, given ``staged_since`` (naive: UTC), collected at or after it.
    """
    staged_frame = _staged_frame(staged)
    since = _naive_utc(staged_since)
    con.register("_staged", staged_frame)
    try:
        return _query(
            con,
            f"""
            SELECT l.name AS model, p.prompt_id, p.prompt, p.messages, p.request_params, p.request_hash,
                   (SELECT d.template_version FROM datasets d WHERE d.name = p.dataset) AS template_version
            FROM prompts p CROSS JOIN llms l
            WHERE list_contains(?, l.name) AND list_contains(?, p.split) AND {_COLLECTABLE}
              AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.model = l.name AND r.prompt_id = p.prompt_id)
              AND NOT EXISTS (SELECT 1 FROM _staged r WHERE r.model = l.name AND r.prompt_id = p.prompt_id
                              AND NOT {_STALE} AND NOT {_STALE_REQUEST}
                              AND (CAST(? AS TIMESTAMP) IS NULL OR r.collected_at >= CAST(? AS TIMESTAMP)))
            ORDER BY l.name, p.prompt_id
            """,
            [list(models), list(splits), since, since],
        )
    finally:
        con.unregister("_staged")


def _staged_frame(staged: pl.DataFrame | None) -> pl.DataFrame:
    """``staged`` with exactly :data:`_STAGED_COLUMNS` (an empty frame for None); raises naming a missing column."""
    if staged is None:
        return pl.DataFrame(schema=_STAGED_COLUMNS)
    if not isinstance(staged, pl.DataFrame):
        raise WarehouseInputError("staged", "frame", type(staged).__name__, "must be a polars.DataFrame")
    for name in _STAGED_COLUMNS:
        if name not in staged.columns:
            raise WarehouseInputError("staged", name, None, f"missing column (have {staged.columns})")
    try:
        return staged.select(pl.col(n).cast(d, strict=True) for n, d in _STAGED_COLUMNS.items())
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise WarehouseInputError("staged", "frame", str(staged.schema), "has a column of the wrong type") from exc


def _naive_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as naive UTC, the way times are stored (a naive one is UTC already)."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def pending_counts(con: duckdb.DuckDBPyConnection, splits: Sequence[str] = ("validation",)) -> pl.DataFrame:
    """Per active catalog LLM, how many prompts of ``splits`` it can be asked and has no current answer to
    (``model, pending``), > 0 only. An answer from an endpoint or model id it no longer has, or to another
    version of the prompt's request (template), counts as missing; imported answers count as answered."""
    return _query(
        con,
        f"""
        SELECT l.name AS model, count(*) AS pending
        FROM llms l CROSS JOIN prompts p
        WHERE l.active AND list_contains(?, p.split) AND {_COLLECTABLE}
          AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.model = l.name AND r.prompt_id = p.prompt_id
                          AND NOT {_STALE} AND NOT {_STALE_REQUEST})
        GROUP BY l.name ORDER BY l.name
        """,
        [list(splits)],
    )


def expected_count(con: duckdb.DuckDBPyConnection, model: str, splits: Sequence[str] = ("validation",)) -> int:
    """How many prompts of ``splits`` ``model`` should have answered (its coverage's denominator): those it can
    be asked, and those of every dataset it has imported answers in."""
    return con.sql(
        f"SELECT count(*) FROM prompts p JOIN llms l ON l.name = $m WHERE list_contains($s, p.split) AND {_EXPECTED}",
        params={"m": model, "s": list(splits)},
    ).fetchall()[0][0]


_RESPONSE_COLUMNS = [*_COLUMNS["responses"], "collected_at"]
_GRADE_COLUMNS = [*_COLUMNS["grades"], "graded_at"]


def archive_responses(
    con: duckdb.DuckDBPyConnection, models: Sequence[str], collected_before: datetime | None = None
) -> int:
    """Move the answers a re-profiling of ``models`` replaces, with their grades, into ``responses_archive`` and
    ``grades_archive``: collected answers from an endpoint or model id the catalog no longer has, or to another
    version of the prompt's request, and, given ``collected_before`` (naive: UTC), every collected answer before
    it (imported answers are never archived: nothing would ask them again). One transaction; returns the
    responses moved. The pairs become pending again; a second call with the same arguments moves nothing."""
    before = None
    if collected_before is not None:  # naive times are UTC, like the stored ones
        aware = collected_before if collected_before.tzinfo else collected_before.replace(tzinfo=UTC)
        before = aware.astimezone(UTC).replace(tzinfo=None)
    moving = f"""
        SELECT r.model, r.prompt_id,
               CASE WHEN {_STALE} THEN 'endpoint changed' WHEN {_STALE_REQUEST} THEN 'template changed'
                    ELSE 're-profiled' END AS reason
        FROM responses r JOIN llms l ON l.name = r.model JOIN prompts p USING (prompt_id)
        WHERE list_contains(?, r.model) AND r.source = 'collected'
          AND ({_STALE} OR {_STALE_REQUEST} OR r.collected_at < ?)
    """
    return _archive(con, moving, [list(models), before])


def archive_pairs(con: duckdb.DuckDBPyConnection, pairs: pl.DataFrame, reason: str = "re-imported") -> int:
    """Move the stored answers of ``pairs`` (``model, prompt_id``), with their grades, into ``responses_archive``
    and ``grades_archive`` with ``reason``, as :func:`archive_responses` does (one transaction; the pairs become
    unanswered): an import that replaces them keeps what they were. Returns the responses moved."""
    if not isinstance(pairs, pl.DataFrame) or not {"model", "prompt_id"} <= set(pairs.columns):
        raise WarehouseInputError("responses_archive", "pairs", type(pairs).__name__, "needs model and prompt_id")
    con.register("_pairs", pairs.select(pl.col("model", "prompt_id").cast(pl.String)).unique())
    try:
        moving = "SELECT r.model, r.prompt_id, ? AS reason FROM responses r JOIN _pairs USING (model, prompt_id)"
        return _archive(con, moving, [reason])
    finally:
        con.unregister("_pairs")


def _archive(con: duckdb.DuckDBPyConnection, moving: str, params: list) -> int:
    """Move the answers the query ``moving`` lists (model, prompt_id, reason) and their grades into the archives,
    deleting them and their recorded failures, in one transaction; returns the responses moved."""
    names, grades = ", ".join(_RESPONSE_COLUMNS), ", ".join(_GRADE_COLUMNS)
    from_r, from_g = ", ".join(f"r.{c}" for c in _RESPONSE_COLUMNS), ", ".join(f"g.{c}" for c in _GRADE_COLUMNS)
    archived_at = datetime.now(UTC).replace(tzinfo=None)
    con.begin()
    try:
        con.execute(f"CREATE TEMP TABLE _moving AS {moving}", params).fetchall()
        moved = con.execute("SELECT count(*) FROM _moving").fetchall()[0][0]
        for sql in (
            f"INSERT INTO responses_archive ({names}, archived_at, reason) "
            f"SELECT {from_r}, ?, m.reason FROM responses r JOIN _moving m USING (model, prompt_id)",
            f"INSERT INTO grades_archive ({grades}, archived_at) "
            f"SELECT {from_g}, ? FROM grades g JOIN _moving m USING (model, prompt_id)",
        ):
            con.execute(sql, [archived_at]).fetchall()
        for table in ("grades", "responses", "collection_failures"):
            con.execute(
                f"DELETE FROM {table} t USING _moving m WHERE t.model = m.model AND t.prompt_id = m.prompt_id"
            ).fetchall()
        con.execute("DROP TABLE _moving").fetchall()
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return moved


def read_archived_outcomes(con: duckdb.DuckDBPyConnection, model: str, splits: Sequence[str]) -> pl.DataFrame:
    """The outcomes (model, prompt_id, score, archived_at) of ``model``'s most recently archived answers on
    ``splits``: its previous profile, empty if it was never re-profiled."""
    return _query(
        con,
        """
        SELECT g.model, g.prompt_id, g.score, g.archived_at FROM grades_archive g JOIN prompts p USING (prompt_id)
        WHERE g.model = ? AND list_contains(?, p.split)
          AND g.archived_at = (SELECT max(archived_at) FROM grades_archive WHERE model = ?)
        ORDER BY g.prompt_id
        """,
        [model, list(splits), model],
    )


def count_answers(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, int]:
    """How many current responses and grades ``model`` has, on every split: ``{"responses": n, "grades": m}``."""
    row = con.sql(
        "SELECT (SELECT count(*) FROM responses WHERE model = $m), (SELECT count(*) FROM grades WHERE model = $m)",
        params={"m": model},
    ).fetchall()[0]
    return {"responses": row[0], "grades": row[1]}


def read_costs(con: duckdb.DuckDBPyConnection, splits: Sequence[str] = ("validation",)) -> pl.DataFrame:
    """Mean realised cost per query (USD) of each LLM's answers on ``splits``: ``model, cost, priced``.

    An answer's cost is what the data measured (``cost_usd``: collected answers are priced from the catalog and
    the tokens used; imported ones keep their per-query USD), else catalog price x tokens where both are known
    (tokens reported, or estimated at import), else the catalog's price per query; ``priced`` is how many answers
    had a cost (``cost`` is null when none had). :func:`read_cost_basis` says which of these it mostly was.
    """
    return _query(
        con,
        f"""
        SELECT model, avg(cost) AS cost, count(cost) AS priced
        FROM ({_ANSWER_COST}) c JOIN prompts p USING (prompt_id)
        WHERE list_contains(?, p.split) GROUP BY model ORDER BY model
        """,
        [list(splits)],
    )


def read_query_costs(
    con: duckdb.DuckDBPyConnection, models: Sequence[str], splits: Sequence[str] = ("test",)
) -> pl.DataFrame:
    """Each answer's cost in USD (``model, prompt_id, cost``; null where unknown), as :func:`read_costs` counts it."""
    return _query(
        con,
        f"SELECT c.model, c.prompt_id, c.cost FROM ({_ANSWER_COST}) c JOIN prompts p USING (prompt_id) "
        "WHERE list_contains(?, c.model) AND list_contains(?, p.split) ORDER BY c.model, c.prompt_id",
        [list(models), list(splits)],
    )


#: How an answer's cost is known, in :data:`_ANSWER_COST`'s order of preference.
COST_BASES = ("measured", "catalog price x tokens", "catalog price x estimated tokens", "price per query")
_TOKEN_PRICED = (
    "r.prompt_tokens IS NOT NULL AND r.completion_tokens IS NOT NULL "
    "AND l.usd_per_mtok_in IS NOT NULL AND l.usd_per_mtok_out IS NOT NULL"
)
#: model, prompt_id, cost and cost_basis of every stored answer: measured USD, else catalog prices per million
#: tokens x its tokens (reported or estimated), else the catalog's price per query; null when none is known.
_ANSWER_COST = f"""
    SELECT r.model, r.prompt_id, coalesce(
            r.cost_usd,
            (r.prompt_tokens * l.usd_per_mtok_in + r.completion_tokens * l.usd_per_mtok_out) / 1e6,
            l.usd_per_query
        ) AS cost,
        CASE WHEN r.cost_usd IS NOT NULL THEN '{COST_BASES[0]}'
             WHEN {_TOKEN_PRICED} AND NOT coalesce(r.tokens_estimated, false) THEN '{COST_BASES[1]}'
             WHEN {_TOKEN_PRICED} THEN '{COST_BASES[2]}'
             WHEN l.usd_per_query IS NOT NULL THEN '{COST_BASES[3]}' END AS cost_basis
    FROM responses r LEFT JOIN llms l ON l.name = r.model
"""


def read_cost_basis(
    con: duckdb.DuckDBPyConnection, models: Sequence[str], splits: Sequence[str] = ("validation",)
) -> pl.DataFrame:
    """How each of ``models``' costs is known (``model, cost_basis``): the basis of most of its answers on
    ``splits``, one of :data:`COST_BASES` (ties: the first in that order); null when none of them has a cost."""
    ranked = ", ".join(f"'{basis}'" for basis in COST_BASES)
    return _query(
        con,
        f"""
        SELECT m.model, b.cost_basis FROM (SELECT unnest(?) AS model) m LEFT JOIN (
            SELECT c.model, c.cost_basis, row_number() OVER (
                PARTITION BY c.model ORDER BY count(*) DESC, list_position([{ranked}], c.cost_basis)) AS rank
            FROM ({_ANSWER_COST}) c JOIN prompts p USING (prompt_id)
            WHERE list_contains(?, c.model) AND list_contains(?, p.split) AND c.cost_basis IS NOT NULL
            GROUP BY c.model, c.cost_basis
        ) b ON b.model = m.model AND b.rank = 1
        ORDER BY m.model
        """,
        [list(models), list(models), list(splits)],
    )


def record_failures(con: duckdb.DuckDBPyConnection, failures: pl.DataFrame) -> int:
    """Record (or add to) failed attempts per pair: model, prompt_id, attempts, last_error_class, run_id."""
    return _write(
        con,
        "collection_failures",
        failures,
        "ON CONFLICT (model, prompt_id) DO UPDATE SET attempts = collection_failures.attempts + excluded.attempts, "
        "last_error_class = excluded.last_error_class, last_failed_at = excluded.last_failed_at, "
        "run_id = excluded.run_id",
        stamp="last_failed_at",
    )


def read_failures(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Pairs whose collection failed and that have no response yet."""
    return _query(con, "SELECT * FROM collection_failures ORDER BY model, prompt_id")


# ---- staged collections ----------------------------------------------------------------------------------
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


# ---- grades ----------------------------------------------------------------------------------------------
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
    clauses, params = ["TRUE"], []
    if models is not None:
        clauses.append("list_contains(?, g.model)")
        params.append(list(models))
    if splits is not None:
        clauses.append("list_contains(?, p.split)")
        params.append(list(splits))
    return _query(
        con,
        f"SELECT g.model, g.prompt_id, g.score FROM grades g JOIN prompts p USING (prompt_id) "
        f"WHERE {' AND '.join(clauses)} ORDER BY g.model, g.prompt_id",
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


# ---- embeddings ------------------------------------------------------------------------------------------
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


# ---- prompt vectors, cluster maps and LLM features ---------------------------------------------------------
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
    if frame.height == 0:
        return None
    row = frame.row(0, named=True)
    home = _database_dir(con)
    if home is not None and not Path(row["path"]).is_absolute():
        row["path"] = str(home / row["path"])
    return row


def _database_dir(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The directory of ``con``'s database file (None in memory)."""
    rows = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return Path(rows[0][0]).resolve().parent if rows and rows[0][0] else None


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


def record_check(con: duckdb.DuckDBPyConnection, model: str, check_name: str, passed: bool, details: str) -> None:
    """Store the latest outcome of one data check of one LLM."""
    frame = pl.DataFrame({"model": [model], "check_name": [check_name], "passed": [passed], "details": [details]})
    updates = "passed = excluded.passed, details = excluded.details, checked_at = excluded.checked_at"
    _write(con, "llm_checks", frame, f"ON CONFLICT (model, check_name) DO UPDATE SET {updates}", stamp="checked_at")


def failing_llms(con: duckdb.DuckDBPyConnection) -> list[str]:
    """LLMs whose latest outcome of any data check is a failure."""
    return _query(con, "SELECT DISTINCT model FROM llm_checks WHERE NOT passed ORDER BY model")["model"].to_list()


def read_failing_checks(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Why each LLM of :func:`failing_llms` fails: ``model, check_name, message``, one row per failing check its
    record's details name (``{check: {"message": ...}}``), else one with the record's own name and no message."""
    records = _query(
        con, "SELECT model, check_name, details FROM llm_checks WHERE NOT passed ORDER BY model, check_name"
    )
    rows = []
    for model, record, details in records.iter_rows():
        failed = _json_object(details)
        named = [(name, f.get("message", "") if isinstance(f, dict) else "") for name, f in failed.items()]
        rows += [(model, name, str(message)) for name, message in named or [(record, "")]]
    return pl.DataFrame(rows, schema={"model": pl.String, "check_name": pl.String, "message": pl.String}, orient="row")


def _json_object(text: str) -> dict:
    """``text`` parsed as a JSON object, else an empty one."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ---- the gateway's decision log ---------------------------------------------------------------------------
def insert_routing_decisions(con: duckdb.DuckDBPyConnection, decisions: pl.DataFrame) -> int:
    """Store routed requests by ``request_id`` (the columns of ``serving.decisions.SCHEMA``; its ``at``, naive UTC
    or aware, is stored as ``decided_at``); those already stored are kept, so loading the same files again stores
    nothing. Returns the rows newly stored."""
    if isinstance(decisions, pl.DataFrame) and "at" in decisions.columns and "decided_at" not in decisions.columns:
        decisions = decisions.rename({"at": "decided_at"})
    if isinstance(decisions, pl.DataFrame) and "decided_at" in decisions.columns:
        kind = decisions.schema["decided_at"]
        if isinstance(kind, pl.Datetime) and kind.time_zone is not None:
            decisions = decisions.with_columns(
                pl.col("decided_at").dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            )
    return _write(con, "routing_decisions", decisions, "ON CONFLICT DO NOTHING", stamp="loaded_at")


def read_routing_decisions(con: duckdb.DuckDBPyConnection, since: datetime | None = None) -> pl.DataFrame:
    """Stored routed requests, optionally those decided at or after ``since`` (aware, or naive UTC), sorted by
    ``decided_at`` (naive UTC)."""
    if since is None:
        return _query(con, "SELECT * FROM routing_decisions ORDER BY decided_at, request_id")
    if since.tzinfo is not None:
        since = since.astimezone(UTC).replace(tzinfo=None)
    return _query(con, "SELECT * FROM routing_decisions WHERE decided_at >= ? ORDER BY decided_at, request_id", [since])


def count_routing_decisions(con: duckdb.DuckDBPyConnection) -> int:
    """How many routed requests are stored."""
    return _query(con, "SELECT count(*) AS n FROM routing_decisions")["n"].item()
