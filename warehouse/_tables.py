"""The one validated write path of the warehouse tables: each table's writable columns, domain rules and keys,
and the helpers every family module writes and reads through.

Writers validate and cast the incoming frame (:func:`_prepare`), then run one ``INSERT ... ON CONFLICT`` in a
transaction (:func:`_write`): a bad frame raises :class:`WarehouseInputError`, naming the table, the column and the
value, and changes nothing. Readers go through :func:`_query` and return Polars frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import polars as pl


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
    "onboarding_plans": {
        "model": (pl.String, True),
        "target": (pl.Int32, True),
        "total": (pl.Int32, True),
        "fraction": (pl.Float64, True),
        "budget_usd": (pl.Float64, False),
        "estimate_usd": (pl.Float64, False),
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
        "embedder_id": (pl.String, False),
        "cluster_weights": (pl.List(pl.Float64), False),  # Phi(x), K numbers
        "ranked_llms": (pl.List(pl.String), False),  # the router's first three, best first
        "ranked_predicted_error": (pl.List(pl.Float64), False),
        "ranked_predicted_cost": (pl.List(pl.Float64), False),
        "served_alias": (pl.String, False),  # champion, or challenger (a canary request)
        "shadow_version": (pl.String, False),  # the other version's choice from the same embedding (null: none)
        "shadow_llm": (pl.String, False),
        "shadow_predicted_error": (pl.Float64, False),
        "shadow_predicted_cost": (pl.Float64, False),
    },
    "traffic_feedback": {
        "feedback_id": (pl.String, True),
        "request_id": (pl.String, True),
        "key_id": (pl.String, False),
        "score": (pl.Float64, True),
        "rated_at": (pl.Datetime("us"), True),  # UTC; the feedback file's ``at``
        "source": (pl.String, True),  # "api" or "import:<file name>"
    },
    "traffic_samples": {
        "request_id": (pl.String, True),
        "sampled_at": (pl.Datetime("us"), True),  # UTC; the traffic file's ``at``
        "key_id": (pl.String, False),
        "router_version": (pl.String, False),
        "chosen_llm": (pl.String, False),
        "prompt": (pl.String, False),
        "messages": (pl.String, False),  # JSON
        "answer": (pl.String, False),
        "embedder_id": (pl.String, False),
        "cluster_weights": (pl.List(pl.Float64), False),
    },
    "traffic_judgements": {
        "request_id": (pl.String, True),
        "judge": (pl.String, True),
        "grader_version": (pl.String, True),
        "score": (pl.Float64, True),
        "judged_by": (pl.String, False),
        "cost_usd": (pl.Float64, False),
        "cached": (pl.Boolean, True),
    },
    "online_evaluation_cells": {
        "router_version": (pl.String, True),
        "llm": (pl.String, True),
        "cluster": (pl.Int32, True),
        "count": (pl.Int32, True),
        "observed_error": (pl.Float64, False),
        "predicted_error": (pl.Float64, False),
        "difference": (pl.Float64, False),
        "se": (pl.Float64, False),
        "z": (pl.Float64, False),
        "alarm": (pl.Boolean, True),
        "message": (pl.String, True),
    },
    "drift_rechecks": {
        "llm": (pl.String, True),
        "cluster": (pl.Int32, True),
        "router_version": (pl.String, True),
        "checked_at": (pl.Datetime("us"), True),  # naive UTC; also the archived_at of the answers it replaced
        "rated": (pl.Int32, True),
        "traffic_z": (pl.Float64, False),
        "asked": (pl.Int32, True),
        "worse": (pl.Int32, True),
        "better": (pl.Int32, True),
        "stored_error": (pl.Float64, False),
        "new_error": (pl.Float64, False),
        "p_value": (pl.Float64, True),
        "z": (pl.Float64, True),
        "changed": (pl.Boolean, True),
        "cost_usd": (pl.Float64, False),
        "message": (pl.String, True),
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
        for c in ("prompt_tokens", "completion_tokens", "realised_cost_usd", "latency_ms", "shadow_predicted_cost")
    ],
    "traffic_feedback": [
        ("score", pl.col("score").is_between(0, 1) & pl.col("score").is_not_nan(), "must be finite and in [0, 1]"),
        ("source", pl.col("source").str.len_chars() > 0, "must not be empty"),
    ],
    "traffic_samples": [],
    "traffic_judgements": [
        ("score", pl.col("score").is_between(0, 1) & pl.col("score").is_not_nan(), "must be finite and in [0, 1]"),
        ("cost_usd", pl.col("cost_usd").is_null() | pl.col("cost_usd").is_between(0, 1e300), "must be finite, >= 0"),
    ],
    "online_evaluation_cells": [("count", pl.col("count") >= 0, "must be >= 0")],
    "drift_rechecks": [
        *((c, pl.col(c) >= 0, "must be >= 0") for c in ("rated", "asked", "worse", "better")),
        ("p_value", pl.col("p_value").is_between(0, 1), "must be in [0, 1]"),
        ("cost_usd", pl.col("cost_usd").is_null() | pl.col("cost_usd").is_between(0, 1e300), "must be finite, >= 0"),
    ],
    "onboarding_plans": [
        ("fraction", pl.col("fraction").is_between(0, 1, closed="right"), "must be in (0, 1]"),
        ("target", pl.col("target").is_between(0, pl.col("total")), "must be in [0, total]"),
        *(
            (c, pl.col(c).is_null() | pl.col(c).is_between(0, 1e300), "must be finite and >= 0")
            for c in ("budget_usd", "estimate_usd")
        ),
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
    "traffic_feedback": ["feedback_id"],
    "traffic_samples": ["request_id"],
    "traffic_judgements": ["request_id", "judge", "grader_version"],
    "online_evaluation_cells": ["router_version", "llm", "cluster"],
    "onboarding_plans": ["model"],
    "drift_rechecks": ["llm", "cluster", "router_version", "checked_at"],
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


def _at_as(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """``frame`` with a record file's ``at`` renamed ``column`` (unless it has ``column`` already) and that column
    as naive UTC (an aware time converted; a naive one taken as UTC). Anything else is left for :func:`_prepare`."""
    if not isinstance(frame, pl.DataFrame):
        return frame
    if "at" in frame.columns and column not in frame.columns:
        frame = frame.rename({"at": column})
    kind = frame.schema.get(column)
    if isinstance(kind, pl.Datetime) and kind.time_zone is not None:
        frame = frame.with_columns(pl.col(column).dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    return frame


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence | None = None) -> pl.DataFrame:
    return con.sql(sql, params=list(params) if params else None).pl()


def _where(conditions: dict[str, object]) -> tuple[str, list]:
    """The SQL conditions (each with one ``?``) whose value is not None, ANDed (``TRUE`` when none), and their
    values; a sequence other than a string is bound as a list."""
    given = {sql: value for sql, value in conditions.items() if value is not None}
    values = [value if isinstance(value, str) else list(value) for value in given.values()]
    return " AND ".join(["TRUE", *given]), values
