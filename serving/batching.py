"""Embed the prompts of concurrent requests together: a few thread calls for all that arrived meanwhile.

Each request awaits its vector. Pending prompts are handed to a thread in one call, and up to ``parallel`` calls
run at once (ONNX Runtime runs concurrent calls in parallel, so one call per core keeps every core busy without
the thread hop and oversubscription of one call per request). A call starts as soon as a slot is free with its
share of what is waiting, so a lone request is never held back for company: the prompts waiting or being embedded
split evenly over the slots (up to ``max_batch``). Taking all that waits would leave the other slot, when it frees,
nothing to embed until a request comes back: a core idle, calls of ~30 and of 1 by turns. The int8 backend still
embeds each prompt on its own inside a call, so a vector never depends on its batch. A call that fails is retried
one prompt at a time, so a prompt the embedder refuses fails its own request only, never its batch's.
``benchmarks.gateway`` measures this against one call per request (``--embed-batch 1``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

import numpy as np
from starlette.concurrency import run_in_threadpool

__all__ = ["EmbeddingBatcher"]


class EmbeddingBatcher:
    """``await batcher.embed(text)`` -> that text's vector, embedded with others waiting at the same time.

    ``max_batch`` caps one call (1: each prompt its own call, concurrently, as without a batcher); ``parallel``
    caps the calls running at once (default: the cores this process may use).
    """

    def __init__(
        self, embed: Callable[[Sequence[str]], np.ndarray], max_batch: int = 32, parallel: int | None = None
    ) -> None:
        parallel = parallel or len(os.sched_getaffinity(0))
        if max_batch < 1 or parallel < 1:
            raise ValueError(f"max_batch={max_batch!r}, parallel={parallel!r}: each must be >= 1")
        self._embed, self.max_batch, self.parallel = embed, max_batch, parallel
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._running = 0
        self._embedding = 0  # prompts in the calls running
        self.batches = 0  # calls made, for tests and metrics

    async def embed(self, text: str) -> np.ndarray:
        if self.max_batch == 1:
            self.batches += 1
            return (await run_in_threadpool(self._embed, [text]))[0]
        future = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        self._start_calls()
        return await future

    def _start_calls(self) -> None:
        while self._pending and self._running < self.parallel:
            share = min(self.max_batch, -(-(len(self._pending) + self._embedding) // self.parallel))
            batch, self._pending = self._pending[:share], self._pending[share:]
            self._running += 1
            self._embedding += len(batch)
            self.batches += 1
            asyncio.get_running_loop().create_task(self._call(batch))

    async def _call(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        try:
            await self._settle(batch)
        finally:
            self._running -= 1
            self._embedding -= len(batch)
            self._start_calls()  # what arrived meanwhile

    async def _settle(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        """Embed ``batch`` in one call; if it fails, each prompt alone, so an error reaches its own request only."""
        try:
            vectors = await run_in_threadpool(self._embed, [text for text, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                for one in batch:
                    await self._settle([one])
                return
            _, future = batch[0]
            if not future.done():
                future.set_exception(exc)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)
