"""Embed the prompts of concurrent requests together: one thread call for all that arrived meanwhile.

Each request awaits its vector; one worker task hands the pending prompts to a thread in one call, so the
embedder runs one batch at a time (no oversubscribed cores, one thread hop per batch rather than per request).
The int8 backend still embeds each prompt on its own inside the call, so a vector never depends on its batch.
``benchmarks.gateway --embed-batch 1`` measures the one-prompt-per-call alternative.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
from starlette.concurrency import run_in_threadpool

__all__ = ["EmbeddingBatcher"]


class EmbeddingBatcher:
    """``await batcher.embed(text)`` -> that text's vector, embedded with others waiting at the same time.

    ``max_batch`` caps one call (1: each prompt its own call, concurrently, as without a batcher).
    """

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r}: must be >= 1")
        self._embed, self.max_batch = embed, max_batch
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batches = 0  # calls made, for tests and metrics

    async def embed(self, text: str) -> np.ndarray:
        if self.max_batch == 1:
            self.batches += 1
            return (await run_in_threadpool(self._embed, [text]))[0]
        future = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self.batches += 1
            try:
                vectors = await run_in_threadpool(self._embed, [text for text, _ in batch])
            except Exception as exc:  # every waiting request gets the error (e.g. an empty text)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)
