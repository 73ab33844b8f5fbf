"""Where the collector's answers go: the :class:`Sink` protocol, the warehouse's sink, and the batches on their way.

Answers go to the sink in batches, written once ``size`` of them wait or the first of them has waited
``interval_s``, whichever comes first, by one worker thread while the requests in flight go on: a killed run loses
at most the answers it received in its last ``interval_s`` (and those of a write in progress).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import duckdb
import polars as pl

import warehouse as wh

if TYPE_CHECKING:
    from profiling.collector import CollectionReport

__all__ = ["ANSWER_SCHEMA", "FAILURE_SCHEMA", "Batches", "Sink", "WarehouseSink", "check_batching"]


#: The columns (and types) of the answers a :class:`Sink` is handed: a stored response, as it came.
ANSWER_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String,
    "prompt_id": pl.String,
    "run_id": pl.String,
    "base_url": pl.String,
    "model_id": pl.String,
    "prompt_hash": pl.String,
    "request_hash": pl.String,
    "template_version": pl.String,
    "request_params": pl.String,
    "response": pl.String,
    "finish_reason": pl.String,
    "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32,
    "cost_usd": pl.Float64,
    "latency_ms": pl.Float64,
}
#: The columns of the failures a :class:`Sink` is handed: pairs given up on in this run, with the attempts made.
FAILURE_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String,
    "prompt_id": pl.String,
    "run_id": pl.String,
    "attempts": pl.Int32,
    "last_error_class": pl.String,
}


class Sink(Protocol):
    """Where the collector's batches go. ``write`` is called on one worker thread while requests are in flight (the
    last batches once none is left), never twice at once, so it may block (a transaction, an fsync)."""

    def write(self, answers: pl.DataFrame, failures: pl.DataFrame) -> int:
        """Keep one batch durably: ``answers`` (:data:`ANSWER_SCHEMA`, checked storable already) and ``failures``
        (:data:`FAILURE_SCHEMA`), either possibly empty. Returns how many answers it took (new ones)."""
        ...


class WarehouseSink:
    """Each batch into the warehouse, one transaction for its answers and one for its failures (pairs stored
    already are skipped; a failure adds its attempts to the pair's). The file's write lock is held throughout."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def write(self, answers: pl.DataFrame, failures: pl.DataFrame) -> int:
        stored = wh.insert_responses(self.con, answers) if answers.height else 0
        if failures.height:
            wh.record_failures(self.con, failures)
        return stored


class Batches:
    """Answers and failures on their way to the sink: the collector's one place that writes.

    A batch is written once ``size`` rows wait or its first row has waited ``interval_s``, whichever comes first,
    by a single worker thread: the requests in flight go on meanwhile. So a killed run loses at most the rows of its
    last ``interval_s`` and of the write in progress. ``written`` is called (on the event loop) after every write.
    """

    def __init__(
        self,
        sink: Sink,
        report: CollectionReport,
        size: int,
        interval_s: float,
        written: Callable[[], None],
    ) -> None:
        self._sink, self._report, self._written = sink, report, written
        self._size, self._interval_s = size, interval_s
        self._answers: list[dict] = []
        self._failures: list[dict] = []
        self._first_at: float | None = None  # when the first row of the batch being filled came (monotonic)
        self._full: collections.deque[tuple[list[dict], list[dict]]] = collections.deque()
        self._due = asyncio.Event()
        # One thread: writes never overlap, and close() can wait for the one in progress.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uniroute-collector-writer")

    def add(self, answer: dict | None = None, failure: dict | None = None) -> None:
        """Queue an answer (checked storable already) or a failure; never blocks."""
        if self._first_at is None:
            self._first_at = time.monotonic()
        if answer is not None:
            self._answers.append(answer)
        if failure is not None:
            self._failures.append(failure)
        if len(self._answers) + len(self._failures) >= self._size:
            self._full.append(self._take())
            self._due.set()

    async def write_when_due(self) -> None:
        """Write every full batch, and the one being filled once its first row has waited ``interval_s``; runs
        until cancelled."""
        while True:
            wait = self._interval_s if self._first_at is None else self._first_at + self._interval_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), max(0.0, wait))
            self._due.clear()
            if self._first_at is not None and time.monotonic() - self._first_at >= self._interval_s:
                self._full.append(self._take())
            while self._full:
                # shielded: cancelling this task must not cancel a write not started yet (its rows would be lost)
                await asyncio.shield(asyncio.wrap_future(self._worker.submit(self._write, *self._full.popleft())))
                self._written()

    def close(self) -> None:
        """Wait for the write in progress, then write every row left (the event loop has nothing else to do)."""
        self._worker.shutdown(wait=True)
        if self._answers or self._failures:
            self._full.append(self._take())
        if not self._full:
            self._written()  # a last report of the totals
        while self._full:
            self._write(*self._full.popleft())
            self._written()

    def _take(self) -> tuple[list[dict], list[dict]]:
        taken = self._answers, self._failures
        self._answers, self._failures, self._first_at = [], [], None
        return taken

    def _write(self, answers: list[dict], failures: list[dict]) -> None:
        """One batch, answers and failures, to the sink."""
        frames = pl.DataFrame(answers, schema=ANSWER_SCHEMA), pl.DataFrame(failures, schema=FAILURE_SCHEMA)
        self._report.stored += self._sink.write(*frames)


def check_batching(batch_size: int, flush_interval_s: float) -> None:
    """``ValueError`` naming the setting unless ``batch_size`` is a whole number >= 1 and ``flush_interval_s`` a
    positive, finite number of seconds."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be a whole number >= 1")
    if isinstance(flush_interval_s, bool) or not isinstance(flush_interval_s, int | float):
        raise ValueError(f"flush_interval_s={flush_interval_s!r}: must be a number of seconds")
    if not (math.isfinite(flush_interval_s) and flush_interval_s > 0):
        raise ValueError(f"flush_interval_s={flush_interval_s!r}: must be a positive number of seconds")
