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

__all__ = ["CollectionReport", "RetryPolicy", "collect", "collect_pairs"]

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
    usd_in: float
    usd_out: float
    semaphore: asyncio.Semaphore
    min_interval_s: float
    next_start: float = 0.0

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


async def _ask(session: aiohttp.ClientSession, endpoint: _Endpoint, prompt: str, timeout_s: float) -> dict:
    body = {"model": endpoint.model_id, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
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
    usage = payload.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or estimate_tokens(prompt))
    completion_tokens = int(usage.get("completion_tokens") or estimate_tokens(text))
    return {
        "response": text,
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_ms": latency_ms,
        "cost_usd": (prompt_tokens * endpoint.usd_in + completion_tokens * endpoint.usd_out) / 1e6,
    }


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
    """Ask each (model, prompt_id, prompt) of ``pairs`` of its LLM in ``llms`` (the catalog) and store answers.

    ``progress`` shows a tqdm bar; ``log_progress`` (e.g. a Dagster logger) gets a line after every batch write.
    """
    policy = policy or RetryPolicy()
    report = CollectionReport(run_id=f"run-{uuid.uuid4().hex[:12]}", requested=pairs.height)
    if pairs.height == 0:
        return report
    endpoints = {
        row["name"]: _Endpoint(
            model=row["name"],
            base_url=row["base_url"],
            model_id=row["model_id"],
            api_key_env=row["api_key_env"],
            usd_in=row["usd_per_mtok_in"],
            usd_out=row["usd_per_mtok_out"],
            semaphore=asyncio.Semaphore(row["max_concurrency"]),
            min_interval_s=60.0 / row["requests_per_minute"] if row["requests_per_minute"] else 0.0,
        )
        for row in llms.iter_rows(named=True)
    }
    unknown = set(pairs["model"].unique()) - set(endpoints)
    if unknown:
        raise ValueError(f"model={sorted(unknown)[0]!r}: not in the catalog")
    rng = random.Random(seed)
    done: list[dict] = []
    failed: list[dict] = []
    bar = tqdm(total=pairs.height, desc="collecting", unit="req", disable=not progress)
    started = time.perf_counter()

    def flush() -> None:
        if done:
            report.stored += wh.insert_responses(con, pl.DataFrame(done))
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

    async def one(session: aiohttp.ClientSession, model: str, prompt_id: str, prompt: str) -> None:
        endpoint = endpoints[model]
        result, kind, attempt = None, "unknown", 0
        while result is None and attempt < policy.max_attempts:
            attempt += 1
            report.attempts += 1
            try:
                async with endpoint.semaphore:
                    result = await _ask(session, endpoint, prompt, policy.timeout_s)
            except _RetryableError as exc:
                kind = exc.kind
                report.errors[kind] += 1
                if attempt < policy.max_attempts:
                    await asyncio.sleep(policy.delay(attempt, exc.retry_after, rng))
            except _PermanentError as exc:
                kind = str(exc)
                report.errors[kind] += 1
                break
        identity = {"model": model, "prompt_id": prompt_id, "run_id": report.run_id}
        if result is None:
            failed.append(identity | {"attempts": attempt, "last_error_class": kind})
            report.failed += 1
        else:
            answered_by = {"base_url": endpoint.base_url, "model_id": endpoint.model_id}
            done.append(identity | answered_by | {"prompt_hash": prompt_hash(prompt)} | result)
            report.cost_usd += result["cost_usd"]
        bar.update(1)
        if len(done) + len(failed) >= batch_size:
            flush()
            bar.set_postfix(errors=sum(report.errors.values()), failed=report.failed, usd=f"{report.cost_usd:.4f}")

    connector = aiohttp.TCPConnector(limit=int(llms["max_concurrency"].sum()) + 8, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            rows = pairs.select("model", "prompt_id", "prompt").iter_rows()
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
