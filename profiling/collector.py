"""Collect LLM responses from OpenAI-compatible endpoints into the warehouse.

Resumable and idempotent: only (model, prompt) pairs with no stored response are requested, results are
written in batches (a killed run loses at most the batch in flight), and stored answers are never asked again.
Retries use exponential backoff with jitter on 429, 5xx, timeouts, transport errors and malformed bodies,
honouring ``Retry-After``; after ``max_attempts`` the pair is recorded in ``collection_failures``.
API keys are read from the environment variable the catalog names, at request time, and appear nowhere else:
errors are recorded by class (``HTTP 503``, ``Timeout``), never by message or body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import duckdb
import polars as pl
from tqdm.auto import tqdm

import warehouse as wh
from profiling.rendering import estimate_tokens
from router_core.embedding import prompt_hash

__all__ = [
    "DEFAULT_REQUEST_PARAMS",
    "CollectionReport",
    "Completion",
    "RetryPolicy",
    "catalog_completer",
    "collect",
    "collect_pairs",
    "complete_many",
    "request_of",
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
    """What a run did; ``failed`` pairs are also in the warehouse's ``collection_failures``."""

    run_id: str
    requested: int = 0
    stored: int = 0
    failed: int = 0
    attempts: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)

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
    next_start: float = 0.0
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
        """Space request starts to respect requests_per_minute."""
        if self.min_interval_s:
            now = time.monotonic()
            start, self.next_start = max(now, self.next_start), max(now, self.next_start) + self.min_interval_s
            await asyncio.sleep(start - now)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _tokens(usage: object, field: str, fallback: str) -> int:
    """A usage count as the endpoint reported it, else estimated from ``fallback``: a missing or malformed count
    (``-1``, ``"n/a"``) never fails an answer already paid for."""
    value = usage.get(field) if isinstance(usage, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 2**31:
        return int(value)
    return estimate_tokens(fallback)


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
    try:
        payload = json.loads(raw)
        choice = payload["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError
    except (ValueError, KeyError, IndexError, TypeError):
        raise _RetryableError("MalformedBody") from None
    usage = payload.get("usage")
    prompt_tokens = _tokens(usage, "prompt_tokens", "\n".join(str(m.get("content") or "") for m in messages))
    completion_tokens = _tokens(usage, "completion_tokens", text)
    priced = endpoint.usd_in is not None and endpoint.usd_out is not None
    finish = choice.get("finish_reason")
    return {
        "response": text,
        "finish_reason": finish if isinstance(finish, str) else None,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_ms": latency_ms,
        "cost_usd": (prompt_tokens * endpoint.usd_in + completion_tokens * endpoint.usd_out) / 1e6 if priced else None,
    }


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
    llm: dict, requests: Sequence[dict], policy: RetryPolicy | None = None, seed: int | None = None
) -> list[Completion | None]:
    """Ask one catalog LLM (a row of :func:`warehouse.read_llms`) each request (``{"messages": [...], "params":
    {...}}``) with the collector's concurrency, pacing and retries; None where a request failed for good. Used by
    graders that ask an LLM (LLM-as-judge); nothing is stored here."""
    if not llm.get("base_url"):
        raise ValueError(f"llm={llm.get('name')!r}: has no base_url, so it cannot be asked")
    policy = policy or RetryPolicy()
    rng = random.Random(seed)

    async def run() -> list[Completion | None]:
        endpoint = _endpoint(llm)
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
    con: duckdb.DuckDBPyConnection, policy: RetryPolicy | None = None
) -> Callable[[str, list[dict]], list[Completion | None]]:
    """``complete(llm_name, requests)`` over the warehouse catalog's endpoints (what ``llm_judge`` graders call)."""

    def complete(name: str, requests: list[dict]) -> list[Completion | None]:
        rows = wh.read_llms(con).filter(pl.col("name") == name)
        if rows.height == 0:
            raise ValueError(f"judge={name!r}: not in the catalog")
        return complete_many(rows.row(0, named=True), requests, policy)

    return complete


def _endpoint(row: dict) -> _Endpoint:
    """A catalog row as an endpoint (its concurrency and pacing are per run)."""
    return _Endpoint(
        model=row["name"],
        base_url=row["base_url"],
        model_id=row["model_id"],
        api_key_env=row["api_key_env"],
        usd_in=row["usd_per_mtok_in"],
        usd_out=row["usd_per_mtok_out"],
        max_concurrency=row["max_concurrency"],
        min_interval_s=60.0 / row["requests_per_minute"] if row["requests_per_minute"] else 0.0,
    )


async def collect_pairs(
    con: duckdb.DuckDBPyConnection,
    pairs: pl.DataFrame,
    llms: pl.DataFrame,
    policy: RetryPolicy | None = None,
    batch_size: int = 512,
    seed: int | None = None,
    progress: bool = True,
    log_progress: Callable[[str], None] | None = None,
) -> CollectionReport:
    """Ask each pair of ``pairs`` (model, prompt_id, prompt, and optionally the prompt's messages,
    request_params, request_hash, template_version: :func:`warehouse.pending_pairs`) of its LLM in ``llms`` (the
    catalog) and store the answers with the request they answered.

    ``progress`` shows a tqdm bar; ``log_progress`` (e.g. a Dagster logger) gets a line after every batch write.
    """
    policy = policy or RetryPolicy()
    report = CollectionReport(run_id=f"run-{uuid.uuid4().hex[:12]}", requested=pairs.height)
    if pairs.height == 0:
        return report
    endpoints = {row["name"]: _endpoint(row) for row in llms.iter_rows(named=True) if row["base_url"]}
    unknown = set(pairs["model"].unique()) - set(endpoints)
    if unknown:
        raise ValueError(f"model={sorted(unknown)[0]!r}: not in the catalog, or it has no base_url")
    for column in ("messages", "request_params", "request_hash", "template_version"):
        if column not in pairs.columns:
            pairs = pairs.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    rng = random.Random(seed)
    done: list[dict] = []
    failed: list[dict] = []
    bar = tqdm(total=pairs.height, desc="collecting", unit="req", disable=not progress)
    started = time.perf_counter()

    def flush() -> None:
        if done:
            report.stored += wh.insert_responses(con, pl.DataFrame(done, infer_schema_length=None))
            done.clear()
        if failed:
            wh.record_failures(con, pl.DataFrame(failed))
            failed.clear()
        if log_progress:
            elapsed = time.perf_counter() - started
            log_progress(
                f"collected {report.stored + report.failed}/{report.requested} "
                f"({(report.stored + report.failed) / elapsed:.0f}/s), {report.failed} failed, "
                f"{sum(report.errors.values())} retried errors, ${report.cost_usd:.4f}"
            )

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
        if result is None:
            failed.append(identity | {"attempts": attempt, "last_error_class": kind})
            report.failed += 1
        else:
            answered_by = {"base_url": endpoint.base_url, "model_id": endpoint.model_id}
            request = {
                "prompt_hash": prompt_hash(prompt),
                "request_hash": request_hash,
                "template_version": template_version,
                "request_params": json.dumps(params, sort_keys=True),
            }
            done.append(identity | answered_by | request | result)
            report.cost_usd += result["cost_usd"] or 0.0
        bar.update(1)
        if len(done) + len(failed) >= batch_size:
            flush()
            bar.set_postfix(errors=sum(report.errors.values()), failed=report.failed, usd=f"{report.cost_usd:.4f}")

    connector = aiohttp.TCPConnector(limit=sum(e.max_concurrency for e in endpoints.values()) + 8, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            columns = ("model", "prompt_id", "prompt", "messages", "request_params", "request_hash", "template_version")
            rows = pairs.select(columns).iter_rows()
            await asyncio.gather(*(one(session, *row) for row in rows))
        finally:
            flush()
            bar.close()
    report.seconds = time.perf_counter() - started
    log.info(
        "collection %s: %d requested, %d stored, %d failed, %d attempts, $%.4f, %.1f s, errors %s",
        report.run_id,
        report.requested,
        report.stored,
        report.failed,
        report.attempts,
        report.cost_usd,
        report.seconds,
        dict(report.errors),
    )
    return report


def collect(
    con: duckdb.DuckDBPyConnection,
    models: Sequence[str] | None = None,
    splits: Sequence[str] = ("validation",),
    policy: RetryPolicy | None = None,
    batch_size: int = 512,
    progress: bool = True,
    log_progress: Callable[[str], None] | None = None,
    refresh_before: datetime | None = None,
) -> CollectionReport:
    """Collect every missing response of ``models`` (default: all active catalog LLMs) on ``splits``.

    Answers from an endpoint or model id the catalog no longer lists for an LLM are archived and asked again;
    ``refresh_before`` (UTC) re-profiles: answers collected before it are archived and asked again too.
    """
    llms = wh.read_llms(con, active_only=True)
    if models is not None:
        unknown = set(models) - set(llms["name"])
        if unknown:
            raise ValueError(f"model={sorted(unknown)[0]!r}: not an active LLM in the catalog")
        llms = llms.filter(pl.col("name").is_in(list(models)))
    archived = wh.archive_responses(con, llms["name"].to_list(), refresh_before)
    if archived:
        log.info("archived %d answers to ask again (new endpoint or model id, or re-profiling)", archived)
        if log_progress:
            log_progress(f"archived {archived} earlier answers to ask again")
    pairs = wh.pending_pairs(con, llms["name"].to_list(), splits)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            collect_pairs(con, pairs, llms, policy, batch_size, progress=progress, log_progress=log_progress)
        )


def _loop_factory():
    """uvloop's event loop where installed (about a third less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
