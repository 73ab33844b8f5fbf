"""The gateway's decision log: one record per routed request, written off the request path to Parquet files.

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

import collections
import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

import warehouse as wh

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
]

log = logging.getLogger("uniroute.decisions")

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
}
#: How many of the ranking a record keeps: the router's choice and the next best two.
RANKED_KEPT = 3
_JSON_FIELDS = ("predicted_error", "predicted_cost", "attempts")
_RANKED_NUMBERS = ("ranked_predicted_error", "ranked_predicted_cost")
_PREFIX = "decisions-"
_POLL_S = 0.02  # how often the writer looks for records while waiting


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


class DecisionLog:
    """A bounded queue of decision records and the thread that writes them to ``directory`` in batches.

    Parameters
    ----------
    directory
        Where the Parquet files go (created); files are named ``decisions-<tag>-<random>-<n>.parquet``, unique per
        process (a random part even if two share a tag) and batch.
    process_tag
        Names this process in the file names; default ``<host>-<pid>``.
    batch_size
        Records per file at most.
    flush_interval_s
        A partial batch is written once its oldest record has waited this long.
    max_queue
        Records waiting at most; past that, :meth:`record` drops and counts (:attr:`dropped`).
    metrics
        Optional: anything with ``set_queue(depth, dropped)`` (``serving.metrics.GatewayMetrics``), told by the
        writer thread after every batch and at least every second, never on the request path.
    """

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
        if batch_size < 1 or max_queue < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and max_queue must be >= 1 and flush_interval_s > 0")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.flush_interval_s = batch_size, flush_interval_s
        # A deque, not a queue.Queue: its append and popleft take no Python-level lock, so close() in a SIGTERM
        # handler that interrupted record() halfway cannot wait forever on a lock the interrupted code holds. The
        # bound is kept by record() under a re-entrant lock (the handler may re-enter it; the writer never takes it).
        self._pending: collections.deque[Mapping] = collections.deque()
        self._max_queue = max_queue
        self._lock = threading.RLock()
        self._closed = False
        self._dropped = 0  # by record(), under the lock
        self._unwritten = 0  # by the writer (one thread at a time: the writer, then close() once it has ended)
        self._written = 0
        self._stop = threading.Event()
        tag = process_tag or f"{socket.gethostname()}-{os.getpid()}"
        self._stem = f"{_PREFIX}{''.join(c if c.isalnum() or c in '-_.' else '_' for c in tag)}-{uuid.uuid4().hex[:8]}"
        self._metrics = metrics
        self._told = 0.0  # monotonic time metrics were last told
        self._batches = itertools.count()
        self._thread = threading.Thread(target=self._run, name="uniroute-decision-log", daemon=True)
        self._thread.start()

    # ---- the request path ---------------------------------------------------------------------------------
    def record(self, decision: Mapping) -> bool:
        """Queue one decision without blocking; False (and counted in :attr:`dropped`) if full or closed."""
        with self._lock:
            if not self._closed and len(self._pending) < self._max_queue:
                self._pending.append(decision)
                return True
            self._dropped += 1
            return False

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Records dropped so far: queue full, log closed, invalid, or their file could not be written."""
        return self._dropped + self._unwritten

    @property
    def written(self) -> int:
        """Records written to files so far."""
        return self._written

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Write every queued record and stop the writer thread; later records are dropped. Idempotent."""
        with self._lock:
            self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._drain()  # anything the thread left (none unless it died)

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the writer thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if batch:
                self._write(batch)
            if batch or time.monotonic() - self._told >= 1.0:
                self._tell()
        self._drain()
        self._tell()

    def _tell(self) -> None:
        self._told = time.monotonic()
        if self._metrics is not None:
            try:
                self._metrics.set_queue(self.depth, self.dropped)
            except Exception:
                log.exception("could not update the decision log's metrics")

    def _collect(self) -> list[Mapping]:
        """Up to a batch: the first record, then the rest until the flush interval has passed since it came (or
        nothing, after a tenth of a second without one, so that metrics are told now and then)."""
        batch: list[Mapping] = []
        started, deadline = time.monotonic(), None
        while len(batch) < self.batch_size:
            try:
                batch.append(self._pending.popleft())
                deadline = deadline or time.monotonic() + self.flush_interval_s
                continue
            except IndexError:
                pass
            now = time.monotonic()
            if self._stop.is_set() or (deadline is not None and now >= deadline):
                break
            if deadline is None and now - started >= 0.1:
                break
            time.sleep(_POLL_S if deadline is None else min(_POLL_S, deadline - now))
        return batch

    def _drain(self) -> None:
        while True:
            batch = []
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._pending.popleft())
                except IndexError:
                    break
            if not batch:
                return
            self._write(batch)

    def _write(self, batch: list[Mapping]) -> None:
        rows = []
        for record in batch:
            try:
                rows.append(_normalise(record))
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("decision record dropped: %s", exc)
                self._unwritten += 1
        if not rows:
            return
        name = f"{self._stem}-{next(self._batches):06d}.parquet"
        final, temp = self.directory / name, self.directory / f".{name}.tmp"
        try:
            frame = pl.DataFrame(rows, schema=SCHEMA, strict=False)
            with open(temp, "wb") as handle:
                frame.write_parquet(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except Exception:
            log.exception("could not write %d decision records to %s", len(rows), final)
            temp.unlink(missing_ok=True)
            self._unwritten += len(rows)
            return
        self._written += len(rows)


def decision_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The finished decision files in ``directory`` (temporary ones left out), sorted by name."""
    return sorted(Path(directory).glob(f"{_PREFIX}*.parquet"))


def read_decisions(directory: str | os.PathLike[str]) -> pl.DataFrame:
    """Every finished decision file in ``directory`` as one frame of :data:`SCHEMA`, one row per request id."""
    return read_decision_files(decision_files(directory))


def read_decision_files(files: list[Path]) -> pl.DataFrame:
    """Decision files as one frame of :data:`SCHEMA`, one row per request id (the first file's, if repeated)."""
    if not files:
        return pl.DataFrame(schema=SCHEMA)
    frame = pl.concat([_read_decision_file(f) for f in files], how="vertical")
    return frame.unique(subset="request_id", keep="first", maintain_order=True)


def _read_decision_file(file: Path) -> pl.DataFrame:
    """One file as a frame of :data:`SCHEMA`; columns it predates (an older gateway's file) read as null."""
    frame = pl.read_parquet(file)
    missing = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in SCHEMA.items() if name not in frame.columns]
    return frame.with_columns(missing).select(list(SCHEMA)).cast(SCHEMA)


def flush_on_sigterm(decision_log: DecisionLog) -> None:
    """On SIGTERM, close ``decision_log`` (every queued record written), then do what SIGTERM did before: call
    the handler installed before this one, or die of SIGTERM (the default). Call it from the main thread.

    Not inside a uvicorn worker: uvicorn installs its own handlers while it serves (replacing this one, and
    putting it back only when it stops) and shuts down gracefully on SIGTERM; there, close the log in the app's
    lifespan shutdown instead. Installed before ``uvicorn.run`` in a single process, it still runs after
    uvicorn's shutdown, which re-raises the signal it caught.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return  # SIGTERM is ignored here: it ends nothing, so there is nothing to flush for

    def handler(signum: int, frame: object) -> None:
        decision_log.close()
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, handler)
