"""Asking an LLM of the catalog without storing anything: what graders that ask an LLM (LLM-as-judge) call.

The requests go out as the collector's do: its concurrency, pacing and retries (:mod:`profiling.collector`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import duckdb
import polars as pl

import warehouse as wh
from profiling.collector import (
    DEFAULT_REQUEST_PARAMS,
    CollectionReport,
    RetryPolicy,
    ask_with_retries,
    endpoint_of,
    loop_factory,
)
from profiling.pacing import LocalPacer, Pacer

__all__ = ["Completion", "catalog_completer", "complete_many"]


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
        endpoint = endpoint_of(llm, pacer or LocalPacer())
        report = CollectionReport(run_id="complete")
        connector = aiohttp.TCPConnector(limit=endpoint.max_concurrency + 8, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(request: dict) -> Completion | None:
                params = request.get("params") or dict(DEFAULT_REQUEST_PARAMS)
                result, _, _ = await ask_with_retries(
                    session, endpoint, request["messages"], params, policy, rng, report
                )
                if result is None:
                    return None
                fields = ("response", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms")
                return Completion(**{f: result[f] for f in fields}, model_id=endpoint.model_id)

            return list(await asyncio.gather(*(one(r) for r in requests)))

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
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
