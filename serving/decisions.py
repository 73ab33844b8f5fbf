"""The gateway's decision log: one record per routed request, written off the request path to Parquet files.

:class:`DecisionLog` is a :class:`serving.recordlog.RecordLog` (the machinery the feedback and traffic logs share):
:meth:`DecisionLog.record` only puts the record on a bounded queue (when it is full the record is dropped and
counted: a slow disk never slows a request); a background thread writes batches to files of this process in the
log's directory, each written under a temporary name and renamed into place, so a reader (the
``routing_decisions`` asset) never sees half a file. :meth:`DecisionLog.close` writes what is queued and stops the
thread: under uvicorn call it from the app's lifespan shutdown (uvicorn runs that on SIGTERM, in every worker);
elsewhere :func:`flush_on_sigterm` installs a SIGTERM handler that closes the log, then dies as SIGTERM would have.

A record holds ids, hashes and numbers, never prompt text or keys: fields not in :data:`SCHEMA` are left out. A
routed request's record also keeps what learning from traffic needs later (:func:`learning_fields`): the embedder
id, the prompt's cluster weights and the predicted error and cost of the router's first three LLMs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

import warehouse as wh
from serving.recordlog import RecordLog, flush_on_sigterm, read_record_files, record_files

__all__ = [
    "BUDGET_KINDS",
    "RANKED_KEPT",
    "SCHEMA",
    "DecisionLog",
    "decision_files",
    "default_directory",
    "flush_on_sigterm",
    "learning_fields",
    "read_decision_files",
    "read_decisions",
    "token_count",
]

#: What bounded the choice: a budget asked for, an explicit cost weight, or nothing (the router's default weight).
BUDGET_KINDS = ("max_cost_per_query", "min_accuracy", "cost_weight", "none")

#: The columns of a decision file (and of the warehouse's ``routing_decisions``); JSON fields are text.
SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "at": pl.Datetime("us", "UTC"),
    "key_id": pl.String(),
    "prompt_hash": pl.String(),
    "router_version": pl.String(),
    "model_requested": pl.String(),
    "chosen_llm": pl.String(),
    "cost_weight": pl.Float64(),
    "budget_kind": pl.String(),  # one of BUDGET_KINDS (a record without one: "none")
    "budget_value": pl.Float64(),
    "candidates": pl.List(pl.String()),
    "predicted_error": pl.String(),  # JSON {llm: e}
    "predicted_cost": pl.String(),  # JSON {llm: usd}
    "attempts": pl.String(),  # JSON [{llm, try_number, status, error, seconds}]
    "status": pl.Int32(),
    "prompt_tokens": pl.Int32(),
    "completion_tokens": pl.Int32(),
    "realised_cost_usd": pl.Float64(),
    "latency_ms": pl.Float64(),
    "stream": pl.Boolean(),
    # what learning from traffic needs later, without the prompt text (null for named-model requests; absent from
    # files written before they existed, read as null):
    "embedder_id": pl.String(),  # what the router's vectors mean
    "cluster_weights": pl.List(pl.Float64()),  # Phi(x): the prompt's K cluster weights (null: no clusters)
    "ranked_llms": pl.List(pl.String()),  # the router's choice and the next best, in ranked order
    "ranked_predicted_error": pl.List(pl.Float64()),  # of each of ranked_llms
    "ranked_predicted_cost": pl.List(pl.Float64()),  # of each of ranked_llms, USD per query
    # rollout (serving.rollout): the alias whose version served (router_version), and the other version's choice
    # from the same vector (null: no shadow), its predicted error and cost per query:
    "served_alias": pl.String(),  # "champion", or "challenger" for a canary request
    "shadow_version": pl.String(),
    "shadow_llm": pl.String(),
    "shadow_predicted_error": pl.Float64(),
    "shadow_predicted_cost": pl.Float64(),
}
#: How many of the ranking a record keeps: the router's choice and the next best two.
RANKED_KEPT = 3
_JSON_FIELDS = ("predicted_error", "predicted_cost", "attempts")
_RANKED_NUMBERS = ("ranked_predicted_error", "ranked_predicted_cost")
_PREFIX = "decisions-"


def learning_fields(ranked: Mapping | None) -> dict:
    """The decision fields a routed request's ranking (``ServableRouter.rank``) gives for learning later: the
    embedder id, the cluster weights, and the first :data:`RANKED_KEPT` LLMs with their predicted error and cost;
    all None without a ranking (a named-model request)."""
    if ranked is None:
        return dict.fromkeys(("embedder_id", "cluster_weights", "ranked_llms", *_RANKED_NUMBERS))
    top = ranked["order"][:RANKED_KEPT]
    return {
        "embedder_id": ranked.get("embedder_id"),
        "cluster_weights": ranked.get("cluster_weights"),
        "ranked_llms": top,
        "ranked_predicted_error": [ranked["predicted_error"][m] for m in top],
        "ranked_predicted_cost": [ranked["cost"][m] for m in top],
    }


def default_directory() -> Path:
    """Where the gateway writes decision files and the asset reads them: ``<warehouse dir>/decisions``."""
    return wh.default_path().parent / "decisions"


def _normalise(record: Mapping) -> dict:
    """The record's known fields, JSON fields as text (dicts and lists encoded), ``at`` as an aware UTC time."""
    row = {name: record.get(name) for name in SCHEMA}
    for name in _JSON_FIELDS:
        if row[name] is not None and not isinstance(row[name], str):
            row[name] = json.dumps(row[name], sort_keys=True, default=str)
    at = row["at"]
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    if at is None:
        at = datetime.now(UTC)
    row["at"] = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if row["budget_kind"] is None:
        row["budget_kind"] = "none"
    if row["candidates"] is not None:
        row["candidates"] = [str(c) for c in row["candidates"]]
    if not row["request_id"] or row["status"] is None:
        raise ValueError("a decision needs a request_id and a status")
    if row["budget_kind"] not in BUDGET_KINDS:
        raise ValueError(f"budget_kind {row['budget_kind']!r} is not one of {BUDGET_KINDS}")
    return row


class DecisionLog(RecordLog):
    """The decision log: a :class:`serving.recordlog.RecordLog` of :data:`SCHEMA` whose files are named
    ``decisions-<tag>-<random>-<n>.parquet`` (parameters as there; ``metrics`` hears its queue and drops)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        process_tag: str | None = None,
        batch_size: int = 256,
        flush_interval_s: float = 2.0,
        max_queue: int = 10_000,
        *,
        metrics: object | None = None,
    ) -> None:
        super().__init__(
            directory,
            SCHEMA,
            _PREFIX,
            _normalise,
            process_tag,
            batch_size,
            flush_interval_s,
            max_queue,
            metrics=metrics,
            kind="decision",
        )


def decision_files(directory: str | os.PathLike[str], *, loaded: bool = False) -> list[Path]:
    """The finished decision files in ``directory`` (temporary ones left out), sorted by name; ``loaded``: those
    the ``routing_decisions`` asset has moved to ``loaded/`` too."""
    return record_files(directory, _PREFIX, loaded=loaded)


def read_decisions(directory: str | os.PathLike[str]) -> pl.DataFrame:
    """Every finished decision file in ``directory`` as one frame of :data:`SCHEMA`, one row per request id."""
    return read_decision_files(decision_files(directory))


def read_decision_files(files: list[Path]) -> pl.DataFrame:
    """Decision files as one frame of :data:`SCHEMA`, one row per request id (the first file's, if repeated);
    columns a file predates (an older gateway's file) read as null."""
    frame = read_record_files(files, SCHEMA)
    return frame.unique(subset="request_id", keep="first", maintain_order=True)


def token_count(value: object) -> int | None:
    """A usage count as the decision record keeps it: a non-negative int32, else None (an upstream's odd value)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None
