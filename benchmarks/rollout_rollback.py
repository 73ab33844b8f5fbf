"""Rollback under load: ``uniroute rollback`` moves ``champion`` back while requests stream in at 32 in flight.

Floor (issue 27): 0 failed requests, and every gateway worker serves the previous version within the reload interval
+ 1 s of the move. The gateway runs ``--workers`` processes behind one port; each answer names the version that
served it (``X-UniRoute-Router-Version``), and every answer to a request sent after the deadline must name the
previous version (at 32 in flight, each worker answers many of them). :func:`rollback_under_load` is the
measurement (``tests/serving/test_rollout_gateway.py`` runs it on the fixture's router); :func:`rollback_section` is
``benchmarks.rollout``'s section; run it alone:

    python -m benchmarks.rollout --sections rollback [--rollback-workers 2] [--rollback-reload-interval 1] [--strict]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp

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
    """Every answer of a load during which the alias moved to ``previous``: the move was asked for at
    ``started_at`` and had returned by ``moved_at`` (monotonic; a CLI move takes seconds to start and exit, and
    workers may follow it before it returns)."""

    answers: list[Answer]
    moved_at: float
    reload_interval_s: float
    previous: str
    started_at: float = 0.0

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
        started_at = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            previous = await asyncio.get_running_loop().run_in_executor(pool, move)
        moved_at = time.monotonic()
        await asyncio.sleep(reload_interval_s + FOLLOW_SLACK_S + after_s)
        done.set()
        return RollbackRun(await loading, moved_at, reload_interval_s, previous, started_at)

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


def rollback_section(bench) -> list[tuple[str, str, str, bool | None]]:
    """``benchmarks.rollout``'s ``rollback`` section on its scratch registry (``bench``: a
    :class:`benchmarks.rollout.Bench`): the gateway (``--rollback-workers`` processes) serves the champion, the
    challenger is promoted while it runs (the gateway follows), then ``uniroute rollback`` under load."""
    from benchmarks.gateway import KEY
    from serving import registry

    args, reload_s = bench.args, bench.args.rollback_reload_interval
    bodies = bench.bodies(500)
    options = ["--workers", str(args.rollback_workers), "--reload-interval", str(reload_s), "--no-shadow"]
    with bench.gateway("gateway-rollback", *options) as (url, _):
        registry.promote("bench", bench.challenger, better=True, reason="benchmark: the version to roll back from")
        wait_for_version(url, bodies, bench.challenger, reload_s + 120, args.concurrency, KEY)
        move = cli_rollback(bench.scratch.tracking, "bench", "benchmark: rollback under load")
        run = rollback_under_load(url, bodies, move, reload_s, args.concurrency, KEY, warm_s=2.0, after_s=5.0)
    floor = f"0 failed; previous version everywhere <= {reload_s + FOLLOW_SLACK_S:g} s"
    return [(f"rollback under load, {args.rollback_workers} workers", run.summary(), floor, run.met())]


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
