"""The routing gateway under load, loopback only, against baselines measured in the same run.

A UniRouter over the dataset's unseen LLMs is registered in a scratch registry; the replay endpoint (its own
process) serves their recorded answers; `uniroute serve` runs as its own process with client keys, exactly as
deployed. Measured, each against its baseline:

1. throughput: ``--requests`` routed requests at ``--concurrency`` in flight, against the bare embedder's
   prompts/s on the same prompts (the first 600; the same embedder, ``--backend``, default the pipeline's int8, in
   this process, while the gateway idles, measured just before and just after the load and averaged, so both see
   the machine alike; ``--rounds`` such rounds, the median counts); the gateway's micro-batching
   (``--embed-batch 32``) against one embedding call per request (``--embed-batch 1``); p50/p99 added latency
   against the same requests sent straight to the chosen LLM;
2. streaming: time to the first ``data:`` event through the gateway (routed) minus straight to the chosen LLM,
   against one embedding of one prompt;
3. refusals: 5 MB bodies, unknown keys, spent budgets and each malformed field get their status, with the
   gateway's CPU time per refusal (from /proc);
4. faults: the replay endpoint injects ``--fault-rate`` faults of every kind it offers (429, 500, 503, hangs,
   truncated bodies, dropped connections); client-visible errors, and after SIGTERM every request's decision and
   every attempt in the decision log (against the endpoint's own request count);
5. hostile clients: ``--hostile-rate`` of the requests poisoned (a lone surrogate in the prompt) or oversized
   (a body over the gateway's limit) among honest ones, at ``--concurrency``: honest requests failed (floor 0);
   and the ledger's cost per request (one reserve and one settle on the SQLite ledger, the benchmark key holding
   a spend limit so that every request reserves and settles);
6. a peer: LiteLLM's proxy (``benchmarks.litellm_peer``, a scratch venv) in front of the same endpoint, a named
   model, no routing: pass-through overhead (one at a time, p50) and requests/s at ``--concurrency``; and what
   routing adds on top of our own pass-through.

    python -m benchmarks.gateway [--requests 2000] [--concurrency 32] [--hostile-rate 0.1] [--no-litellm] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.scratch_registry import add_scratch_arguments, scratch_registry
from pipelines.demo import write_catalog
from replay import FaultKind
from router_core import Embedder
from serving.decisions import read_decisions
from serving.keys import KeyPolicy, KeyStore
from serving.ledger import SqliteLedger
from serving.processes import free_port, server_process

KEY, SPENT_KEY = "bench-0123456789abcdef0123", "spent-0123456789abcdef0123"
FIVE_MB = b'{"model": "uniroute", "messages": [{"role": "user", "content": "' + b"x" * 5_000_000 + b'"}]}'
OVERSIZED = FIVE_MB[:1_200_000] + b'"}]}'  # just over the gateway's 1 MB body limit
BENCH_USD_PER_DAY = 1e9  # never reached: there so that every request reserves and settles its spend


@dataclass
class Load:
    """One load run: per request latency (s), status, chosen LLM, time to first data event (s), wall seconds."""

    latencies: list[float]
    statuses: list[int]
    chosen: list[str]
    first_event: list[float]
    wall: float
    request_ids: list[str] = field(default_factory=list)  # each answer's x-request-id ("" where none came)
    versions: list[str] = field(default_factory=list)  # each answer's X-UniRoute-Router-Version ("" where none came)

    @property
    def errors(self) -> int:
        return sum(s != 200 for s in self.statuses)

    def rps(self) -> float:
        return len(self.latencies) / self.wall

    def ms(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies) * 1e3, q))


async def _load(url: str, bodies: list[dict | bytes], concurrency: int, headers: dict[str, str]) -> Load:
    """POST every body with ``concurrency`` in flight; a stream's body is read to its end."""
    semaphore = asyncio.Semaphore(concurrency)
    n = len(bodies)
    load = Load([0.0] * n, [0] * n, [""] * n, [float("nan")] * n, 0.0, [""] * n, [""] * n)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = bodies[i]
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with semaphore:
            started = time.perf_counter()
            try:
                async with session.post(url, headers=headers, **kwargs) as response:
                    async for line in response.content:
                        if line.startswith(b"data:") and np.isnan(load.first_event[i]):
                            load.first_event[i] = time.perf_counter() - started
                        if b'"stream_interrupted"' in line:
                            load.statuses[i] = -2  # a stream that broke after its first byte
                    if load.statuses[i] == 0:
                        load.statuses[i] = response.status
                    load.chosen[i] = response.headers.get("X-UniRoute-LLM", "")
                    load.request_ids[i] = response.headers.get("x-request-id", "")
                    load.versions[i] = response.headers.get("X-UniRoute-Router-Version", "")
            except aiohttp.ClientError:
                load.statuses[i] = -1
            load.latencies[i] = time.perf_counter() - started

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(*(one(session, i) for i in range(n)))
    load.wall = time.perf_counter() - started
    return load


def load(url: str, bodies: list, concurrency: int, key: str | None = KEY) -> Load:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"} if key else {}
    return asyncio.run(_load(url, bodies, concurrency, headers))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def replay_process(root: Path, data_dir: Path, name: str, *args: str) -> Iterator[str]:
    """``uniroute replay-server`` as its own process; yields its base URL (``.../v1``)."""
    port = free_port()
    command = [sys.executable, "-m", "pipelines.cli", "replay-server", "--data", str(data_dir), "--port", str(port)]
    with server_process([*command, *args], f"http://127.0.0.1:{port}/v1/models", root / f"{name}.log"):
        yield f"http://127.0.0.1:{port}/v1"


@contextmanager
def gateway_process(root: Path, catalog: Path, tracking: str, name: str, *args: str):
    """``uniroute serve`` with the benchmark's keys; yields (chat URL, process)."""
    keys = root / "keys.yaml"
    keys.write_text(
        f"- {{id: bench, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, usd_per_day: {BENCH_USD_PER_DAY:g}}}\n"
        f"- {{id: spent, sha256: {hashlib.sha256(SPENT_KEY.encode()).hexdigest()}, usd_per_day: 0}}\n"
    )
    port, home = free_port(), root / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--catalog", str(catalog)]
    command += ["--tracking-uri", tracking, "--model-uri", "models:/bench@champion", "--keys-file", str(keys)]
    command += ["--decisions-dir", str(home / "decisions"), "--ledger", str(home / "ledger.sqlite"), *args]
    with server_process(command, f"http://127.0.0.1:{port}/ready", home / "gateway.log") as process:
        yield f"http://127.0.0.1:{port}/v1/chat/completions", process


def bare_embedder_pps(embedder: Embedder, prompts: list[str], concurrency: int) -> float:
    """The bare embedder's prompts/s on ``prompts`` (what the gateway can at best route per second): the better of
    one call per 32 prompts and ``concurrency`` concurrent one-prompt calls (ONNX Runtime runs them in parallel)."""
    started = time.perf_counter()
    for i in range(0, len(prompts), 32):
        embedder.embed(prompts[i : i + 32])
    sequential = len(prompts) / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as threads:
        list(threads.map(lambda text: embedder.embed([text]), prompts))
    return max(sequential, len(prompts) / (time.perf_counter() - started))


def throughput_rounds(
    url: str, bodies: list[dict], embedder: Embedder, prompts: list[str], args: argparse.Namespace
) -> tuple[Load, float]:
    """``args.rounds`` rounds of: the bare embedder's prompts/s (the gateway idles), the routed load, the bare
    embedder again; each round's ratio is its load's req/s over the mean of its two bare figures, so both see the
    machine alike. Returns the median round (its load, its bare figure): one round on 2 shared cores moves by
    +-10%."""
    rounds: list[tuple[float, Load, float]] = []
    for i in range(args.rounds):
        before = bare_embedder_pps(embedder, prompts, args.concurrency)
        routed = load(url, bodies, args.concurrency)
        bare = (before + bare_embedder_pps(embedder, prompts, args.concurrency)) / 2
        rounds.append((routed.rps() / bare, routed, bare))
        print(
            f"  round {i + 1}: gateway {routed.rps():.1f} req/s, bare embedder {bare:.1f} prompts/s "
            f"(mean of before and after): {routed.rps() / bare:.2f}",
            flush=True,
        )
    _, routed, bare = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
    return routed, bare


def ledger_ms_per_request(path: Path, n: int = 2000) -> float:
    """Milliseconds of one reserve and one settle on a SQLite ledger (what each request of a limited key adds)."""
    store = KeyStore(ledger=SqliteLedger(path))
    policy = KeyPolicy("bench", usd_per_day=BENCH_USD_PER_DAY)
    started = time.perf_counter()
    for _ in range(n):
        store.settle(store.reserve(policy, 0.01), 0.001)
    return (time.perf_counter() - started) / n * 1e3


def hostile_mix(bodies: list[dict], rate: float) -> tuple[list[dict | bytes], list[bool]]:
    """``bodies`` with every ``1/rate``-th one poisoned (a lone surrogate) or oversized, alternately; and which are
    honest."""
    every = max(1, round(1 / rate)) if rate > 0 else len(bodies) + 1
    mixed, honest = [], []
    for i, body in enumerate(bodies):
        hostile = i % every == every - 1
        if hostile and (i // every) % 2 == 0:
            text = body["messages"][0]["content"] + "\ud800"
            body = {**body, "messages": [{"role": "user", "content": text}]}
        elif hostile:
            body = OVERSIZED
        mixed.append(body)
        honest.append(not hostile)
    return mixed, honest


def refusal_cases(prompt: str, pool: list[str]) -> list[tuple[str, bytes, str, int]]:
    """(case, body, key, expected status) for each kind of request the gateway must refuse."""

    def body(**fields) -> bytes:
        return json.dumps({"model": "uniroute", "messages": [{"role": "user", "content": prompt}], **fields}).encode()

    return [
        ("5 MB body", FIVE_MB, KEY, 413),
        ("unknown key", body(), "nobody-0123456789abcdef", 401),
        ("spent budget", body(), SPENT_KEY, 429),
        ("invalid UTF-8", b'{"model": "\xff"}', KEY, 400),
        ("100k-deep nesting", b"[" * 100_000 + b"]" * 100_000, KEY, 400),
        ("a list as model", body(model=["uniroute"]), KEY, 400),
        ('stream: "false"', body(stream="false"), KEY, 400),
        ("candidates as a string", body(candidates=pool[0]), KEY, 400),
        ("cost_weight=Infinity", body().replace(b"}]}", b'}], "cost_weight": Infinity}'), KEY, 400),
        ("n=4", body(n=4), KEY, 400),
        ("max_tokens=10^7", body(max_tokens=10**7), KEY, 400),
        ("tools not a list", body(tools="all"), KEY, 400),
        ("a budget on a named model", body(model=pool[0], max_cost_per_query=0.01), KEY, 400),
        ("unknown model", body(model="gpt-99"), KEY, 404),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scratch_arguments(parser)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path; the median counts")
    parser.add_argument("--streams", type=int, default=100, help="streamed requests, one at a time")
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--hostile-rate", type=float, default=0.1, help="requests poisoned or oversized")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM side-by-side")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a floor is missed")
    args = parser.parse_args(argv)
    try:
        scratch = scratch_registry(args, "gateway")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root, tracking, data_dir, embedder = scratch.root, scratch.tracking, scratch.data_dir, scratch.embedder
    texts, unseen = scratch.texts, scratch.unseen
    prompts = [texts[i % len(texts)] for i in range(args.requests)]
    bodies = [{"model": "uniroute", "messages": [{"role": "user", "content": p}]} for p in prompts]
    pool = unseen["model"].to_list()
    rows: list[tuple[str, str, str, bool | None]] = []  # (what, result, floor, met)
    print(f"machine: {machine_description()}\n", flush=True)

    embedder.embed(texts[:16])
    with replay_process(root, data_dir, "replay") as base_url:
        catalog = root / "llms.yaml"
        write_catalog(catalog, unseen, base_url)
        results: dict[int, Load] = {}
        bare: dict[int, float] = {}
        for batch in (32, 1):
            with gateway_process(root, catalog, tracking, f"gateway-batch{batch}", "--embed-batch", str(batch)) as (
                url,
                _,
            ):
                load(url, bodies[:64], args.concurrency)  # warm-up
                print(f"embed batch {batch}:", flush=True)
                results[batch], bare[batch] = throughput_rounds(url, bodies, embedder, prompts[:600], args)
        best = max(results, key=lambda b: results[b].rps() / bare[b])
        routed = results[best]
        direct_bodies = [{**b, "model": llm or pool[0]} for b, llm in zip(bodies, routed.chosen, strict=True)]
        direct_url = f"{base_url}/chat/completions"
        named_model = max(set(routed.chosen) - {""}, key=routed.chosen.count)  # the LLM it chose most often
        direct = load(direct_url, direct_bodies, args.concurrency, key=None)

        with gateway_process(root, catalog, tracking, "gateway", "--embed-batch", str(best)) as (url, process):
            load(url, bodies[:32], 4)
            # streaming, one at a time, interleaved so that load on the machine hits all three alike: one embedding
            # in this process, the request routed through the gateway, the same request straight to the LLM it chose
            embedding_ms, ttfb_added = [], []
            for body in bodies[: args.streams]:
                began = time.perf_counter()
                embedder.embed([body["messages"][0]["content"]])
                embedding_ms.append((time.perf_counter() - began) * 1e3)
                through = load(url, [{**body, "stream": True}], 1)
                straight = load(direct_url, [{**body, "stream": True, "model": through.chosen[0]}], 1, key=None)
                ttfb_added.append((through.first_event[0] - straight.first_event[0]) * 1e3)
            one_embedding_ms, ttfb_added = float(np.median(embedding_ms)), float(np.nanmedian(ttfb_added))
            # pass-through (a named model): one at a time, and at full concurrency; routing on, one at a time
            named = [{**b, "model": named_model} for b in bodies[:200]]
            ours_one = load(url, named, 1)
            direct_one = load(direct_url, named, 1, key=None)
            routed_one = load(url, bodies[:200], 1)
            ours_many = load(url, [{**b, "model": named_model} for b in bodies], args.concurrency)
            # hostile clients among honest ones
            mixed, honest = hostile_mix(bodies, args.hostile_rate)
            hostile_load = load(url, mixed, args.concurrency)
            honest_failed = sum(s != 200 for s, ok in zip(hostile_load.statuses, honest, strict=True) if ok)
            hostile_statuses = {s for s, ok in zip(hostile_load.statuses, honest, strict=True) if not ok}
            # refusals: status and the gateway's CPU per refusal
            refusals = []
            for case, body, key, status in refusal_cases(prompts[0], pool):
                cpu = cpu_seconds(process.pid)
                got = load(url, [body] * 20, 1, key=key)
                refusals.append((case, status, set(got.statuses), (cpu_seconds(process.pid) - cpu) / 20 * 1e3))

        peer = None
        if not args.no_litellm:
            from benchmarks.litellm_peer import MASTER_KEY, ensure_litellm_venv, litellm_proxy

            venv = ensure_litellm_venv(DATA_HOME / "bench" / "litellm")
            with litellm_proxy({m: base_url for m in pool}, venv, root / "litellm.log") as litellm_url:
                peer_url = f"{litellm_url}/v1/chat/completions"
                load(peer_url, named[:32], 4, key=MASTER_KEY)
                peer_one = load(peer_url, named, 1, key=MASTER_KEY)
                peer = (
                    peer_one,
                    load(peer_url, [{**b, "model": named_model} for b in bodies], args.concurrency, MASTER_KEY),
                )

    faults = [f"--fault={kind}={args.fault_rate / len(FaultKind)}" for kind in FaultKind]  # every kind it offers
    with replay_process(root, data_dir, "replay-faults", *faults, "--retry-after=0", "--hang-seconds=60") as base_url:
        catalog = root / "llms-faults.yaml"
        write_catalog(catalog, unseen, base_url)
        text = catalog.read_text().replace("max_concurrency: 64}", "max_concurrency: 64, timeout_first_byte_s: 1}")
        catalog.write_text(text)
        with gateway_process(root, catalog, tracking, "gateway-faults", "--embed-batch", str(best)) as (url, process):
            faulty = load(url, bodies, args.concurrency)
            process.send_signal(signal.SIGTERM)  # at once: records still queued must reach the disk
            process.wait(timeout=60)
        stats = json.loads(_get(base_url.removesuffix("/v1") + "/_replay/stats"))
    decisions = read_decisions(root / "gateway-faults" / "decisions")
    attempts = [a for text in decisions["attempts"] for a in json.loads(text) if a["error"] != "circuit_open"]
    endpoint_saw, injected = sum(stats.values()), sum(n for kind, n in stats.items() if kind in set(FaultKind))

    ledger_ms = ledger_ms_per_request(root / "ledger-cost.sqlite")
    added = (np.array(routed.latencies) - np.array(direct.latencies)) * 1e3
    print(f"\n{args.requests} requests, {args.concurrency} in flight, replay latency 0 ms\n")
    print("| path | p50 ms | p99 ms | requests/s | errors |\n|---|---|---|---|---|")
    for name, run in (
        (f"gateway, routed (embed batch {best})", routed),
        (f"gateway, routed (embed batch {1 if best == 32 else 32})", results[1 if best == 32 else 32]),
        ("chosen endpoint directly", direct),
        (f"gateway, named model ({named_model})", ours_many),
        *((("LiteLLM proxy, named model", peer[1]),) if peer else ()),
        (f"gateway, routed, {args.fault_rate:.0%} injected faults", faulty),
        (f"gateway, routed, {args.hostile_rate:.0%} poisoned or oversized (their errors counted)", hostile_load),
    ):
        print(f"| {name} | {run.ms(50):.1f} | {run.ms(99):.1f} | {run.rps():.1f} | {run.errors} |")
    print(
        f"\nadded by routing + forwarding, per request at {args.concurrency} in flight: p50 "
        f"{np.percentile(added, 50):.1f} ms, p99 {np.percentile(added, 99):.1f} ms"
    )

    overhead = float(np.median(np.array(ours_one.latencies) - np.array(direct_one.latencies))) * 1e3
    routing_adds = float(np.median(np.array(routed_one.latencies) - np.array(direct_one.latencies))) * 1e3
    print("\n| one request at a time | p50 added over direct, ms |\n|---|---|")
    print(f"| gateway, named model (pass-through) | {overhead:.2f} |")
    print(f"| gateway, routed (embedding + choice + forward) | {routing_adds:.2f} |")
    if peer:
        peer_overhead = float(np.median(np.array(peer[0].latencies) - np.array(direct_one.latencies))) * 1e3
        print(f"| LiteLLM proxy, named model | {peer_overhead:.2f} |")

    print("\n| refused request | expected | got | gateway CPU ms per request |\n|---|---|---|---|")
    for case, status, got, cpu_ms in refusals:
        print(f"| {case} | {status} | {', '.join(map(str, sorted(got)))} | {cpu_ms:.2f} |")

    bare_pps = bare[best]
    ratio = routed.rps() / bare_pps
    rows.append(
        ("throughput / bare embedder", f"{ratio:.2f} ({routed.rps():.1f} / {bare_pps:.1f})", ">= 0.90", ratio >= 0.9)
    )
    rows.append(
        (
            f"streaming TTFB added, p50 (one embedding {one_embedding_ms:.1f} ms)",
            f"{ttfb_added:.1f} ms",
            f"<= {one_embedding_ms + 5:.1f} ms",
            ttfb_added <= one_embedding_ms + 5,
        )
    )
    rows.append(("client-visible errors with faults", str(faulty.errors), "0", faulty.errors == 0))
    rows.append(("injected faults survived", str(injected), "> 0", injected > 0))
    rows.append(
        (
            "decisions on disk after SIGTERM",
            f"{decisions.height} of {args.requests}",
            "all",
            decisions.height == args.requests,
        )
    )
    rows.append(
        (
            "attempts in the decision log / endpoint requests",
            f"{len(attempts)} / {endpoint_saw}",
            "equal",
            len(attempts) == endpoint_saw,
        )
    )
    rows.append(
        (
            f"honest requests failed among {args.hostile_rate:.0%} hostile ones (those got {sorted(hostile_statuses)})",
            str(honest_failed),
            "0",
            honest_failed == 0 and hostile_statuses <= {400, 413},
        )
    )
    rows.append(("spend ledger per request (reserve + settle, SQLite)", f"{ledger_ms:.3f} ms", "", None))
    worst = max(cpu for *_, cpu in refusals)
    right = all(got == {status} for _, status, got, _ in refusals)
    rows.append(
        (
            "refusals: right status, worst CPU per request",
            f"{right}, {worst:.1f} ms",
            "all, < 50 ms",
            right and worst < 50,
        )
    )
    if peer:
        rows.append(
            (
                "pass-through p50 overhead, ours vs LiteLLM",
                f"{overhead:.2f} vs {peer_overhead:.2f} ms",
                "ours <=",
                overhead <= peer_overhead,
            )
        )
        rows.append(
            (
                f"named model req/s at {args.concurrency}, ours vs LiteLLM",
                f"{ours_many.rps():.1f} vs {peer[1].rps():.1f}",
                "ours >=",
                ours_many.rps() >= peer[1].rps(),
            )
        )
    print("\n| floor | measured | required | met |\n|---|---|---|---|")
    for what, result, floor, met in rows:
        print(f"| {what} | {result} | {floor or '-'} | {'-' if met is None else 'yes' if met else 'NO'} |")
    missed = [what for what, *_, met in rows if met is False]
    return 1 if missed and args.strict else 0


def _get(url: str) -> str:
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return response.read().decode()


if __name__ == "__main__":
    raise SystemExit(main())
