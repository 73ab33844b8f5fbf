"""Concurrent prompts share one embedding call; each gets its own vector, and an error reaches only its own
request (a failed call is retried one prompt at a time)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serving.batching import EmbeddingBatcher


def _slow_embed(texts):
    time.sleep(0.02)
    if "bad" in texts:
        raise ValueError("texts[0]: must be a non-empty string")
    return np.array([[float(len(t))] for t in texts])


def test_requests_arriving_together_share_calls_and_get_their_own_vectors():
    async def run(max_batch, parallel=1):
        batcher = EmbeddingBatcher(_slow_embed, max_batch=max_batch, parallel=parallel)
        texts = [f"prompt number {'x' * i}" for i in range(40)]
        vectors = await asyncio.gather(*(batcher.embed(t) for t in texts))
        return batcher.batches, [v[0] for v in vectors], [float(len(t)) for t in texts]

    batches, got, expected = asyncio.run(run(32))
    assert got == expected and batches <= 3  # 40 prompts: the first alone, then the rest in <= 32s
    batches, got, expected = asyncio.run(run(1))
    assert got == expected and batches == 40
    batches, got, expected = asyncio.run(run(32, parallel=2))
    assert got == expected and batches <= 4  # two alone (a slot each), then the rest in <= 32s


def test_parallel_calls_run_at_once_and_never_more():
    running, most = 0, 0

    def embed(texts):
        nonlocal running, most
        running += 1
        most = max(most, running)
        time.sleep(0.05)
        running -= 1
        return np.zeros((len(texts), 1))

    async def run():
        batcher = EmbeddingBatcher(embed, max_batch=4, parallel=3)
        started = time.perf_counter()
        await asyncio.gather(*(batcher.embed(str(i)) for i in range(24)))
        return time.perf_counter() - started, batcher.batches

    seconds, batches = asyncio.run(run())
    assert most == 3 and batches >= 6 and seconds < 0.05 * batches  # overlapping calls, at most three at once


def test_an_error_fails_its_own_request_only_never_its_batch():
    async def run():
        batcher = EmbeddingBatcher(_slow_embed, parallel=1)
        first = asyncio.ensure_future(batcher.embed("fine"))
        await asyncio.sleep(0)  # the first batch starts with "fine" alone
        texts = ["honest"] * 10 + ["bad"] + ["also fine"] * 10  # one batch, with a poisoned prompt in it
        batch = asyncio.gather(*(batcher.embed(t) for t in texts), return_exceptions=True)
        return await first, await batch, await batcher.embed("later"), batcher.batches

    first, batch, later, calls = asyncio.run(run())
    assert first[0] == 4.0 and later[0] == 5.0
    assert isinstance(batch[10], ValueError)
    assert [r[0] for r in batch[:10]] == [6.0] * 10 and [r[0] for r in batch[11:]] == [9.0] * 10
    assert calls == 3  # the failed call's retries are part of it
    with pytest.raises(ValueError, match="max_batch"):
        EmbeddingBatcher(_slow_embed, max_batch=0)
    with pytest.raises(ValueError, match="parallel"):
        EmbeddingBatcher(_slow_embed, parallel=-1)


def test_a_freed_slot_takes_its_share_of_what_waits_not_all():
    sizes = []

    def embed(texts):
        sizes.append(len(texts))
        time.sleep(0.02)
        return np.zeros((len(texts), 1))

    async def run():
        batcher = EmbeddingBatcher(embed, max_batch=32, parallel=2)
        await asyncio.gather(*(batcher.embed(str(i)) for i in range(31)))  # two alone (a slot each), 29 waiting

    asyncio.run(run())
    # the first slot to free takes 15 of the 31 prompts waiting or embedded, not all 29 (which would leave the
    # other slot nothing to embed when it frees: a core idle under load)
    assert sizes[:2] == [1, 1] and sorted(sizes[2:]) == [14, 15]
