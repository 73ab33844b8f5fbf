"""Collect LLM responses from OpenAI-compatible endpoints into a sink: the warehouse, or staging files.

Resumable and idempotent: only (model, prompt) pairs with no stored response are requested, so stored answers are
never asked again and never duplicated. Answers go to the :class:`Sink` the collector is handed in batches, written
once ``batch_size`` (512) of them wait or the first of them has waited ``flush_interval_s`` (2 s), whichever comes
first, by one worker thread while the requests in flight go on: a killed run loses at most the answers it received
in its last ``flush_interval_s`` (and those of a write in progress), and a re-run asks exactly the pairs not stored.
:class:`WarehouseSink` writes each batch to the warehouse in one transaction (what :func:`collect` and the CLI do);
``profiling.staging.StagingSink`` writes it to a durable file outside the warehouse, merged later in a short step.

A profiling run is three steps, each a function of its own: :func:`archive_replaced_answers` (answers from a changed
endpoint or request, or before ``refresh_before``, move to the archive and become pending), planning
(:func:`warehouse.pending_pairs`, or ``profiling.staging.plan_collection`` with staging) and asking
(:func:`collect_pairs` / :func:`run_collection`). :func:`collect` runs them in that order.

Paid work is never lost to one bad answer: a body with no text answer (not JSON, ``choices`` missing or empty,
``content`` not a string) is retried and, after ``max_attempts``, recorded in ``collection_failures``; a malformed
field of an answer that has its text (a token count that is missing, negative, fractional or not a number, ``usage``
that is not an object, a cost that is not finite, a non-string ``finish_reason``, characters that cannot be
stored) is estimated, left null or replaced, counted in :attr:`CollectionReport.repaired`, and the answer stored.
Every answer is checked against the warehouse's rules before it joins a batch, so one row can never make a
batch's write fail; an unforeseen exception while asking costs that pair (a failure named by the exception's
class), never the run. Retries use exponential backoff with jitter on 429, 5xx, timeouts, transport errors and
malformed bodies, honouring ``Retry-After``.
API keys are read from the environment variable the catalog names, at request time, and appear nowhere else:
errors are recorded by class (``HTTP 503``, ``Timeout``), never by message or body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import aiohttp
import duckdb
import polars as pl
from tqdm.auto import tqdm

import warehouse as wh
from profiling.pacing import LocalPacer, Pacer, endpoint_key
from profiling.rendering import estimate_tokens
from router_core.embedding import prompt_hash

__all__ = [
    "ANSWER_SCHEMA",
    "DEFAULT_REQUEST_PARAMS",
    "FAILURE_SCHEMA",
    "CollectionReport",
    "Completion",
    "RetryPolicy",
    "Sink",
    "WarehouseSink",
    "active_llms",
    "archive_replaced_answers",
    "catalog_completer",
    "collect",
    "collect_pairs",
    "complete_many",
    "new_run_id",
    "request_of",
    "run_collection",
]

log = logging.getLogger(__name__)
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one pair: attempts, backoff (seconds) and the per-request timeout."""

    max_attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 20.0
    timeout_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Backoff before attempt ``attempt + 1``: exponential with full jitter, at least ``Retry-After``."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.5)
        return max(backoff, min(retry_after or 0.0, self.max_delay_s))


@dataclass
class CollectionReport:
    """What a run did; ``failed`` pairs are also in the warehouse's ``collection_failures`` (once merged, when the
    run wrote to staging). ``stored``: answers the sink took (new to the warehouse, or staged)."""

    run_id: str
    requested: int = 0
    stored: int = 0
    failed: int = 0
    attempts: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)
    #: Fields of stored answers the endpoint sent malformed or not at all, per field (``usage.prompt_tokens``,
    #: ``cost_usd``, ...): token counts estimated from the text, a non-finite cost or a non-string finish reason
    #: left null, characters that cannot be stored replaced.
    repaired: Counter = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.stored == self.requested


class _PermanentError(Exception):
    """Not worth retrying (e.g. 404 unknown model)."""


class _RetryableError(Exception):
    def __init__(self, kind: str, retry_after: float | None = None) -> None:
        super().__init__(kind)
        self.kind, self.retry_after = kind, retry_after


@dataclass
class _Endpoint:
    model: str
    base_url: str
    model_id: str
    api_key_env: str | None
    usd_in: float | None
    usd_out: float | None
    max_concurrency: int
    min_interval_s: float
    pacer: Pacer
    semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.max_concurrency)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise _PermanentError(f"api_key_env {self.api_key_env} not set")
        return {"Authorization": f"Bearer {key}"}

    async def pace(self) -> None:
        """Space request starts to respect requests_per_minute, the endpoint's limit (:mod:`profiling.pacing`)."""
        if self.min_interval_s:
            await self.pacer.wait_turn(endpoint_key(self.base_url), self.min_interval_s)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds, if it is a number (an HTTP date or garbage: none)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


#: A token count the warehouse stores (INTEGER): 0 <= n < 2**31.
_MAX_TOKENS = 2**31


def _count(usage: object, name: str) -> int | None:
    """``usage[name]`` if it is a whole number the warehouse can store, else None (``-1``, ``"n/a"``, ``1.5``,
    NaN, ``true``, missing, ``usage`` not an object)."""
    value = usage.get(name) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (0 <= value < _MAX_TOKENS and value == int(value)):  # NaN and infinities fail the range
        return None
    return int(value)


#: What UTF-8 cannot hold in a str: lone surrogates (valid JSON escapes, e.g. half an emoji cut by a tokenizer).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable_text(text: str) -> tuple[str, bool]:
    """``text`` as UTF-8 can hold it (each lone surrogate becomes U+FFFD), and whether it changed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text), True
    return text, False


def _read_answer(raw: bytes, messages: Sequence[dict], usd_in: float | None, usd_out: float | None) -> dict:
    """The answer in a 200 body: its text, finish reason, token counts, cost and the fields ``repaired``.

    A body with no text answer raises a retryable ``MalformedBody``. Any other malformed field is repaired, never
    raised: the answer is paid for already. A count is estimated from the text, a non-finite cost (from a price
    that is not finite) and a non-string finish reason become null, characters UTF-8 cannot hold are replaced.
    """
    try:
        payload = json.loads(raw)
        choice = payload["choices"][0]
        text = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):  # RecursionError: absurdly nested JSON
        raise _RetryableError("MalformedBody") from None
    if not isinstance(text, str):  # None (a refusal, tool calls), a number, a list of parts
        raise _RetryableError("MalformedBody")
    repaired = []
    text, changed = _storable_text(text)
    if changed:
        repaired.append("content")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        finish = None
        repaired.append("finish_reason")
    elif finish is not None:
        finish, changed = _storable_text(finish)
        if changed:
            repaired.append("finish_reason")
    usage = payload.get("usage")
    prompt_tokens = _count(usage, "prompt_tokens")
    if prompt_tokens is None:
        prompt_tokens = estimate_tokens("\n".join(str(m.get("content") or "") for m in messages))
        repaired.append("usage.prompt_tokens")
    completion_tokens = _count(usage, "completion_tokens")
    if completion_tokens is None:
        completion_tokens = estimate_tokens(text)
        repaired.append("usage.completion_tokens")
    cost = None
    if usd_in is not None and usd_out is not None:
        cost = (prompt_tokens * usd_in + completion_tokens * usd_out) / 1e6
        if not (math.isfinite(cost) and cost >= 0):
            cost = None
            repaired.append("cost_usd")
    return {
        "response": text,
        "finish_reason": finish,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost,
        "repaired": repaired,
    }


def _unstorable(row: dict) -> str | None:
    """The first field of an answer row the warehouse would refuse (its rules for ``responses``), else None."""
    for name in ("prompt_tokens", "completion_tokens"):
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_TOKENS:
            return name
    for name, required in (("latency_ms", True), ("cost_usd", False)):
        value = row[name]
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
            return name
    for name, required in (("response", True), ("finish_reason", False), ("prompt_hash", True)):
        value = row[name]
        if value is None and not required:
            continue
        if not isinstance(value, str) or _storable_text(value)[1]:
            return name
    return None


async def _ask(
    session: aiohttp.ClientSession, endpoint: _Endpoint, messages: list[dict], params: dict, timeout_s: float
) -> dict:
    body = {**params, "model": endpoint.model_id, "messages": messages}
    await endpoint.pace()
    started = time.perf_counter()
    try:
        async with session.post(
            endpoint.url, json=body, headers=endpoint.headers(), timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            status, retry_after, raw = response.status, response.headers.get("Retry-After"), await response.read()
    except TimeoutError:
        raise _RetryableError("Timeout") from None
    except aiohttp.ClientError as exc:
        raise _RetryableError(type(exc).__name__) from None
    latency_ms = (time.perf_counter() - started) * 1000
    if status in _RETRYABLE_STATUS:
        raise _RetryableError(f"HTTP {status}", _retry_after(retry_after))
    if status != 200:
        raise _PermanentError(f"HTTP {status}")
    return _read_answer(raw, messages, endpoint.usd_in, endpoint.usd_out) | {"latency_ms": latency_ms}


#: What a prompt is sent with when its dataset sets nothing else (the collector's behaviour before datasets).
DEFAULT_REQUEST_PARAMS = {"temperature": 0}


def request_of(prompt: str, messages: str | None, params: str | None) -> tuple[list[dict], dict]:
    """The chat messages and request parameters a stored prompt is sent with (its JSON columns; null: one user
    message holding ``prompt``, temperature 0)."""
    return (
        json.loads(messages) if messages else [{"role": "user", "content": prompt}],
        json.loads(params) if params else dict(DEFAULT_REQUEST_PARAMS),
    )


async def _ask_with_retries(
    session: aiohttp.ClientSession,
    endpoint: _Endpoint,
    messages: list[dict],
    params: dict,
    policy: RetryPolicy,
    rng: random.Random,
    report: CollectionReport,
) -> tuple[dict | None, str, int]:
    """One request, retried per ``policy``: (answer or None, the last error class, attempts made)."""
    result, kind, attempt = None, "unknown", 0
    while result is None and attempt < policy.max_attempts:
        attempt += 1
        report.attempts += 1
        try:
            async with endpoint.semaphore:
                result = await _ask(session, endpoint, messages, params, policy.timeout_s)
        except _RetryableError as exc:
            kind = exc.kind
            report.errors[kind] += 1
            if attempt < policy.max_attempts:
                await asyncio.sleep(policy.delay(attempt, exc.retry_after, rng))
        except _PermanentError as exc:
            kind = str(exc)
            report.errors[kind] += 1
            break
        except Exception as exc:  # unforeseen: it costs this pair, not the run; by class only (never a message)
            kind = type(exc).__name__
            report.errors[kind] += 1
            log.warning("%s while asking %s: recorded as a failure of the pair", kind, endpoint.model)
            break
    return result, kind, attempt


@dataclass(frozen=True)
class Completion:
    """One answer of :func:`complete_many`."""

    response: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_ms: float
    model_id: str


def complete_many(
    llm: dict,
    requests: Sequence[dict],
    policy: RetryPolicy | None = None,
    seed: int | None = None,
    pacer: Pacer | None = None,
) -> list[Completion | None]:
    """Ask one catalog LLM (a row of :func:`warehouse.read_llms`) each request (``{"messages": [...], "params":
    {...}}``) with the collector's concurrency, pacing and retries; None where a request failed for good. Used by
    graders that ask an LLM (LLM-as-judge); nothing is stored here."""
    if not llm.get("base_url"):
        raise ValueError(f"llm={llm.get('name')!r}: has no base_url, so it cannot be asked")
    policy = policy or RetryPolicy()
    rng = random.Random(seed)

    async def run() -> list[Completion | None]:
        endpoint = _endpoint(llm, pacer or LocalPacer())
        report = CollectionReport(run_id="complete")
        connector = aiohttp.TCPConnector(limit=endpoint.max_concurrency + 8, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(request: dict) -> Completion | None:
                params = request.get("params") or dict(DEFAULT_REQUEST_PARAMS)
                result, _, _ = await _ask_with_retries(
                    session, endpoint, request["messages"], params, policy, rng, report
                )
                if result is None:
                    return None
                fields = ("response", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms")
                return Completion(**{f: result[f] for f in fields}, model_id=endpoint.model_id)

            return list(await asyncio.gather(*(one(r) for r in requests)))

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run())


def catalog_completer(
    con: duckdb.DuckDBPyConnection, policy: RetryPolicy | None = None, pacer: Pacer | None = None
) -> Callable[[str, list[dict]], list[Completion | None]]:
    """``complete(llm_name, requests)`` over the warehouse catalog's endpoints (what ``llm_judge`` graders call),
    paced by ``pacer`` (default: each call its own). The catalog is read now: the warehouse is not held later."""
    llms = wh.read_llms(con)

    def complete(name: str, requests: list[dict]) -> list[Completion | None]:
        rows = llms.filter(pl.col("name") == name)
        if rows.height == 0:
            raise ValueError(f"judge={name!r}: not in the catalog")
        return complete_many(rows.row(0, named=True), requests, policy, pacer=pacer)

    return complete


def _endpoint(row: dict, pacer: Pacer) -> _Endpoint:
    """A catalog row as an endpoint: its concurrency is per run, its pace ``pacer``'s (per endpoint)."""
    return _Endpoint(
        model=row["name"],
        base_url=row["base_url"],
        model_id=row["model_id"],
        api_key_env=row["api_key_env"],
        usd_in=row["usd_per_mtok_in"],
        usd_out=row["usd_per_mtok_out"],
        max_concurrency=row["max_concurrency"],
        min_interval_s=60.0 / row["requests_per_minute"] if row["requests_per_minute"] else 0.0,
        pacer=pacer,
    )


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


class _Batches:
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
        """Queue an answer (checked already: see ``_unstorable``) or a failure; never blocks."""
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


def _check_batching(batch_size: int, flush_interval_s: float) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be a whole number >= 1")
    if isinstance(flush_interval_s, bool) or not isinstance(flush_interval_s, int | float):
        raise ValueError(f"flush_interval_s={flush_interval_s!r}: must be a number of seconds")
    if not (math.isfinite(flush_interval_s) and flush_interval_s > 0):
        raise ValueError(f"flush_interval_s={flush_interval_s!r}: must be a positive number of seconds")


def new_run_id() -> str:
    """A fresh collection run id (``run-`` and 12 hex digits): it names the run's answers, and its staging files."""
    return f"run-{uuid.uuid4().hex[:12]}"


async def collect_pairs(
    sink: Sink | duckdb.DuckDBPyConnection,
    pairs: pl.DataFrame,
    llms: pl.DataFrame,
    policy: RetryPolicy | None = None,
    batch_size: int = 512,
    seed: int | None = None,
    progress: bool = True,
    log_progress: Callable[[str], None] | None = None,
    flush_interval_s: float = 2.0,
    run_id: str | None = None,
    pacer: Pacer | None = None,
) -> CollectionReport:
    """Ask each pair of ``pairs`` (model, prompt_id, prompt, and optionally the prompt's messages,
    request_params, request_hash, template_version: :func:`warehouse.pending_pairs`) of its LLM in ``llms`` (the
    catalog) and hand the answers, with the request they answered, and the failures to ``sink`` (a DuckDB
    connection: :class:`WarehouseSink` on it).

    Answers and failures are written once ``batch_size`` of them wait or the first has waited ``flush_interval_s``,
    on one worker thread (never on the event loop). ``run_id`` (default :func:`new_run_id`) names the answers.
    ``progress`` shows a tqdm bar; ``log_progress`` (e.g. a Dagster logger) gets a line after every batch write.
    ``pacer`` spaces request starts per endpoint (``requests_per_minute``): default this run's own
    (:class:`profiling.pacing.LocalPacer`); a :class:`profiling.pacing.SharedPacer` shares the pace with other runs.
    """
    _check_batching(batch_size, flush_interval_s)
    if isinstance(sink, duckdb.DuckDBPyConnection):
        sink = WarehouseSink(sink)
    policy = policy or RetryPolicy()
    report = CollectionReport(run_id=run_id or new_run_id(), requested=pairs.height)
    if pairs.height == 0:
        return report
    pacer = pacer or LocalPacer()
    endpoints = {row["name"]: _endpoint(row, pacer) for row in llms.iter_rows(named=True) if row["base_url"]}
    unknown = set(pairs["model"].unique()) - set(endpoints)
    if unknown:
        raise ValueError(f"model={sorted(unknown)[0]!r}: not in the catalog, or it has no base_url")
    for column in ("messages", "request_params", "request_hash", "template_version"):
        if column not in pairs.columns:
            pairs = pairs.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    rng = random.Random(seed)
    bar = tqdm(total=pairs.height, desc="collecting", unit="req", disable=not progress)
    started = time.perf_counter()

    def written() -> None:
        bar.set_postfix(errors=sum(report.errors.values()), failed=report.failed, usd=f"{report.cost_usd:.4f}")
        if log_progress:
            elapsed = time.perf_counter() - started
            log_progress(
                f"collected {report.stored + report.failed}/{report.requested} "
                f"({(report.stored + report.failed) / elapsed:.0f}/s), {report.failed} failed, "
                f"{sum(report.errors.values())} retried errors, ${report.cost_usd:.4f}"
            )

    batches = _Batches(sink, report, batch_size, flush_interval_s, written)

    async def one(
        session: aiohttp.ClientSession,
        model: str,
        prompt_id: str,
        prompt: str,
        messages_json: str | None,
        params_json: str | None,
        request_hash: str | None,
        template_version: str | None,
    ) -> None:
        endpoint = endpoints[model]
        messages, params = request_of(prompt, messages_json, params_json)
        result, kind, attempt = await _ask_with_retries(session, endpoint, messages, params, policy, rng, report)
        identity = {"model": model, "prompt_id": prompt_id, "run_id": report.run_id}
        if result is not None:
            repaired = result.pop("repaired")
            answered_by = {"base_url": endpoint.base_url, "model_id": endpoint.model_id}
            request = {
                "prompt_hash": prompt_hash(prompt),
                "request_hash": request_hash,
                "template_version": template_version,
                "request_params": json.dumps(params, sort_keys=True),
            }
            answer = identity | answered_by | request | result
            if (bad := _unstorable(answer)) is None:
                batches.add(answer=answer)
                report.cost_usd += result["cost_usd"] or 0.0
                report.repaired.update(repaired)
            else:  # checked here so that one row can never make a whole batch's write fail
                log.warning("answer of %s: %s cannot be stored; recorded as a failure of the pair", model, bad)
                result, kind = None, "UnstorableAnswer"
                report.errors[kind] += 1
        if result is None:
            batches.add(failure=identity | {"attempts": attempt, "last_error_class": kind})
            report.failed += 1
        bar.update(1)

    connector = aiohttp.TCPConnector(limit=sum(e.max_concurrency for e in endpoints.values()) + 8, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        columns = ("model", "prompt_id", "prompt", "messages", "request_params", "request_hash", "template_version")
        writer = asyncio.create_task(batches.write_when_due())
        asks = asyncio.gather(*(one(session, *row) for row in pairs.select(columns).iter_rows()))
        try:
            await asyncio.wait((writer, asks), return_when=asyncio.FIRST_COMPLETED)
            if writer.done():  # a write failed: nothing more could be stored, so stop paying for answers
                asks.cancel()
                writer.result()
            await asks
        finally:
            writer.cancel()
            asks.cancel()
            try:
                batches.close()
            finally:
                bar.close()
    report.seconds = time.perf_counter() - started
    log.info(
        "collection %s: %d requested, %d stored, %d failed, %d attempts, $%.4f, %.1f s, errors %s, repaired %s",
        report.run_id,
        report.requested,
        report.stored,
        report.failed,
        report.attempts,
        report.cost_usd,
        report.seconds,
        dict(report.errors),
        dict(report.repaired),
    )
    return report


def run_collection(
    sink: Sink | duckdb.DuckDBPyConnection, pairs: pl.DataFrame, llms: pl.DataFrame, **options
) -> CollectionReport:
    """:func:`collect_pairs` (``options``: its keyword arguments) on an event loop of its own (uvloop's where
    installed), for callers without one."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(collect_pairs(sink, pairs, llms, **options))


def active_llms(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None) -> pl.DataFrame:
    """The catalog rows of ``models`` (default: every active LLM); an unknown or inactive name raises, naming it."""
    llms = wh.read_llms(con, active_only=True)
    if models is None:
        return llms
    unknown = set(models) - set(llms["name"])
    if unknown:
        raise ValueError(f"model={sorted(unknown)[0]!r}: not an active LLM in the catalog")
    return llms.filter(pl.col("name").is_in(list(models)))


def archive_replaced_answers(
    con: duckdb.DuckDBPyConnection,
    models: Sequence[str] | None = None,
    refresh_before: datetime | None = None,
    log_progress: Callable[[str], None] | None = None,
) -> int:
    """The first step of a profiling run: archive the answers of ``models`` (default: every active LLM) that a
    re-profiling replaces (:func:`warehouse.archive_responses`: from an endpoint or model id the catalog no longer
    lists, to another version of the prompt's request, or collected before ``refresh_before``, UTC), so that their
    pairs are pending again. A short write (one transaction); idempotent. Returns the answers archived."""
    names = active_llms(con, models)["name"].to_list()
    archived = wh.archive_responses(con, names, refresh_before)
    if archived:
        log.info("archived %d answers to ask again (new endpoint or model id, or re-profiling)", archived)
        if log_progress:
            log_progress(f"archived {archived} earlier answers to ask again")
    return archived


def collect(
    con: duckdb.DuckDBPyConnection,
    models: Sequence[str] | None = None,
    splits: Sequence[str] = ("validation",),
    policy: RetryPolicy | None = None,
    batch_size: int = 512,
    progress: bool = True,
    log_progress: Callable[[str], None] | None = None,
    refresh_before: datetime | None = None,
    flush_interval_s: float = 2.0,
) -> CollectionReport:
    """Collect every missing response of ``models`` (default: all active catalog LLMs) on ``splits`` into the
    warehouse, holding ``con`` throughout: the three steps of a profiling run in order.

    1. :func:`archive_replaced_answers`: answers from an endpoint or model id the catalog no longer lists for an
       LLM, or to an older request, are archived and asked again; ``refresh_before`` (UTC) re-profiles: answers
       collected before it are archived and asked again too.
    2. :func:`warehouse.pending_pairs`: what to ask.
    3. :func:`run_collection` into :class:`WarehouseSink`: answers are stored once ``batch_size`` of them wait or
       the first has waited ``flush_interval_s``.

    To wait on endpoints without holding the warehouse, use ``profiling.staging`` (plan, collect to staging, merge).
    """
    _check_batching(batch_size, flush_interval_s)
    llms = active_llms(con, models)
    archive_replaced_answers(con, llms["name"].to_list(), refresh_before, log_progress)
    pairs = wh.pending_pairs(con, llms["name"].to_list(), splits)
    return run_collection(
        WarehouseSink(con),
        pairs,
        llms,
        policy=policy,
        batch_size=batch_size,
        progress=progress,
        log_progress=log_progress,
        flush_interval_s=flush_interval_s,
    )


def _loop_factory():
    """uvloop's event loop where installed (about a third less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
