"""Collect LLM responses from OpenAI-compatible endpoints into a sink: the warehouse, or staging files.

Resumable and idempotent: only (model, prompt) pairs with no stored response are requested, so stored answers are
never asked again and never duplicated. Answers go to the :class:`~profiling.batches.Sink` the collector is handed in
batches (:class:`profiling.batches.Batches`: ``batch_size`` answers, or ``flush_interval_s`` after the first),
written by one worker thread while the requests in flight go on.

A profiling run is three steps, each a function of its own: :func:`archive_replaced_answers` (answers from a changed
endpoint or request, or before ``refresh_before``, move to the archive and become pending), planning
(``profiling.staging.plan_collection``) and asking (:func:`collect_pairs` / :func:`run_collection`), then a merge of
what was staged; ``profiling.staging.collect`` runs them in that order.

Paid work is never lost to one bad answer: a body with no text answer (not JSON, ``choices`` missing or empty,
``content`` not a string) is retried and, after ``max_attempts``, recorded in ``collection_failures``; a malformed
field of an answer that has its text (a token count that is missing, negative, fractional or not a number, ``usage``
that is not an object, a cost that is not finite, a non-string ``finish_reason``, characters that cannot be
stored) is estimated, left null or replaced, counted in :attr:`CollectionReport.repaired`, and the answer stored.
Every answer is checked against the warehouse's rules before it joins a batch, so one row can never make a
batch's write fail; an unforeseen exception while asking costs that pair (a failure named by the exception's
class), never the run. The request, its timeouts and size bound, which failures are retried and ``Retry-After`` are
:mod:`openai_compat`'s (shared with the gateway); retries use exponential backoff with jitter.
API keys are read from the environment variable the catalog names, at request time, and appear nowhere else:
errors are recorded by class (``HTTP 503``, ``Timeout``), never by message or body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import aiohttp
import duckdb
import polars as pl
from tqdm.auto import tqdm

import warehouse as wh
from openai_compat import (
    RequestFailed,
    Timeouts,
    answer_text,
    backoff_delay,
    bearer_headers,
    chat_url,
    cost_usd,
    first_choice,
    parse_body,
    post_chat,
    token_count,
)
from profiling.answer_rows import storable_text, unstorable_field
from profiling.batches import ANSWER_SCHEMA, FAILURE_SCHEMA, Batches, Sink, WarehouseSink, check_batching
from profiling.budget import SpendLimit, worst_case_usd
from profiling.pacing import LocalPacer, Pacer, endpoint_key
from profiling.rendering import estimate_tokens
from router_core.embedding import prompt_hash

if TYPE_CHECKING:
    from profiling.staging import MergeReport

__all__ = [
    "ANSWER_SCHEMA",
    "DEFAULT_REQUEST_PARAMS",
    "FAILURE_SCHEMA",
    "CollectionReport",
    "RetryPolicy",
    "Sink",
    "WarehouseSink",
    "active_llms",
    "archive_replaced_answers",
    "ask_with_retries",
    "collect_pairs",
    "endpoint_of",
    "loop_factory",
    "new_run_id",
    "request_of",
    "run_collection",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one pair: attempts, backoff (seconds) and the per-request timeout."""

    max_attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 20.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s!r}: must be a positive number of seconds")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Backoff before attempt ``attempt + 1``: exponential with jitter, at least ``Retry-After`` (both at most
        ``max_delay_s``: :func:`openai_compat.backoff_delay`)."""
        return backoff_delay(attempt, retry_after, self.base_delay_s, self.max_delay_s, rng)

    def timeouts(self) -> Timeouts:
        """Each request's limit: ``timeout_s`` for everything (connect, first byte, the whole body)."""
        return Timeouts.overall(self.timeout_s)


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
    #: What the run's merge stored (:func:`profiling.staging.collect`); None for a run that merges nothing.
    merged: MergeReport | None = None
    #: Pairs left unasked per LLM because its budget was reached, and one line per such LLM saying so.
    not_asked: Counter = field(default_factory=Counter)
    budget_messages: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.stored == self.requested


@dataclass
class _Endpoint:
    model: str
    base_url: str
    model_id: str
    api_key_env: str | None
    usd_in: float | None
    usd_out: float | None
    usd_per_query: float | None
    max_concurrency: int
    min_interval_s: float
    pacer: Pacer
    semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.max_concurrency)

    @property
    def url(self) -> str:
        return chat_url(self.base_url)

    async def pace(self) -> None:
        """Space request starts to respect requests_per_minute, the endpoint's limit (:mod:`profiling.pacing`)."""
        if self.min_interval_s:
            await self.pacer.wait_turn(endpoint_key(self.base_url), self.min_interval_s)


def _read_answer(raw: bytes, messages: Sequence[dict], usd_in: float | None, usd_out: float | None) -> dict:
    """The answer in a 200 body: its text, finish reason, token counts, cost and the fields ``repaired``.

    A body with no text answer raises a retryable ``MalformedBody``. Any other malformed field is repaired, never
    raised: the answer is paid for already. A count is estimated from the text, a non-finite cost (from a price
    that is not finite) and a non-string finish reason become null, characters UTF-8 cannot hold are replaced.
    """
    payload = parse_body(raw)
    text = answer_text(payload)
    if text is None:  # not JSON, no choice, None (a refusal, tool calls), a number, a list of parts
        raise RequestFailed("MalformedBody")
    choice = first_choice(payload)
    repaired = []
    text, changed = storable_text(text)
    if changed:
        repaired.append("content")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        finish = None
        repaired.append("finish_reason")
    elif finish is not None:
        finish, changed = storable_text(finish)
        if changed:
            repaired.append("finish_reason")
    usage = payload.get("usage")
    prompt_tokens = token_count(usage, "prompt_tokens")
    if prompt_tokens is None:
        prompt_tokens = estimate_tokens("\n".join(str(m.get("content") or "") for m in messages))
        repaired.append("usage.prompt_tokens")
    completion_tokens = token_count(usage, "completion_tokens")
    if completion_tokens is None:
        completion_tokens = estimate_tokens(text)
        repaired.append("usage.completion_tokens")
    cost = None
    if usd_in is not None and usd_out is not None:
        cost = cost_usd(prompt_tokens, completion_tokens, usd_in, usd_out)
        if cost is None:
            repaired.append("cost_usd")
    return {
        "response": text,
        "finish_reason": finish,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost,
        "repaired": repaired,
    }


async def _ask(
    session: aiohttp.ClientSession, endpoint: _Endpoint, messages: list[dict], params: dict, timeouts: Timeouts
) -> dict:
    """One request (:func:`openai_compat.post_chat`) and its answer, with its latency; else ``RequestFailed``."""
    body = {**params, "model": endpoint.model_id, "messages": messages}
    await endpoint.pace()
    started = time.perf_counter()
    raw = await post_chat(session, endpoint.url, body, bearer_headers(endpoint.api_key_env), timeouts)
    latency_ms = (time.perf_counter() - started) * 1000
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


async def ask_with_retries(
    session: aiohttp.ClientSession,
    endpoint: _Endpoint,
    messages: list[dict],
    params: dict,
    policy: RetryPolicy,
    rng: random.Random,
    report: CollectionReport,
) -> tuple[dict | None, str, int]:
    """One request, retried per ``policy``: (answer or None, the last error class, attempts made). Also what
    ``profiling.completion`` asks with."""
    result, kind, attempt = None, "unknown", 0
    while result is None and attempt < policy.max_attempts:
        attempt += 1
        report.attempts += 1
        try:
            async with endpoint.semaphore:
                result = await _ask(session, endpoint, messages, params, policy.timeouts())
        except RequestFailed as exc:
            kind = exc.kind
            report.errors[kind] += 1
            if not exc.retryable:  # e.g. 404 unknown model: not worth another try
                break
            if attempt < policy.max_attempts:
                await asyncio.sleep(policy.delay(attempt, exc.retry_after_s, rng))
        except Exception as exc:  # unforeseen: it costs this pair, not the run; by class only (never a message)
            kind = type(exc).__name__
            report.errors[kind] += 1
            log.warning("%s while asking %s: recorded as a failure of the pair", kind, endpoint.model)
            break
    return result, kind, attempt


def endpoint_of(row: dict, pacer: Pacer) -> _Endpoint:
    """A catalog row as an endpoint: its concurrency is per run, its pace ``pacer``'s (per endpoint)."""
    return _Endpoint(
        model=row["name"],
        base_url=row["base_url"],
        model_id=row["model_id"],
        api_key_env=row["api_key_env"],
        usd_in=row["usd_per_mtok_in"],
        usd_out=row["usd_per_mtok_out"],
        usd_per_query=row.get("usd_per_query"),
        max_concurrency=row["max_concurrency"],
        min_interval_s=60.0 / row["requests_per_minute"] if row["requests_per_minute"] else 0.0,
        pacer=pacer,
    )


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
    budget: SpendLimit | None = None,
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
    ``budget`` (:class:`profiling.budget.SpendLimit`) reserves each pair's estimated worst case before asking it and
    stops an LLM's collection at its limit; the pairs left are counted in the report's ``not_asked``.
    """
    check_batching(batch_size, flush_interval_s)
    if isinstance(sink, duckdb.DuckDBPyConnection):
        sink = WarehouseSink(sink)
    policy = policy or RetryPolicy()
    report = CollectionReport(run_id=run_id or new_run_id(), requested=pairs.height)
    if pairs.height == 0:
        return report
    pacer = pacer or LocalPacer()
    endpoints = {row["name"]: endpoint_of(row, pacer) for row in llms.iter_rows(named=True) if row["base_url"]}
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

    batches = Batches(sink, report, batch_size, flush_interval_s, written)

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
        worst = worst_case_usd(messages, params, endpoint.usd_in, endpoint.usd_out, endpoint.usd_per_query) or 0.0
        if budget is not None and not await budget.reserve(model, worst):
            bar.update(1)
            return
        result, kind, attempt = await ask_with_retries(session, endpoint, messages, params, policy, rng, report)
        if budget is not None:
            await budget.settle(model, worst, None if result is None else result["cost_usd"])
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
            if (bad := unstorable_field(answer)) is None:
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
    if budget is not None:
        report.not_asked.update(budget.not_asked)
        report.budget_messages = budget.messages()
        for message in report.budget_messages:
            log.warning(message)
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
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
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


def loop_factory():
    """uvloop's event loop where installed (about a third less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
