"""Pace request starts per endpoint, within a run or across every run on a machine.

A catalog entry's ``requests_per_minute`` is the endpoint's limit, not one run's: when several profiling runs (or
several catalog entries: one provider serving many models) send to one ``base_url`` at once, their request starts
are spaced as if one client sent them all. Each request to an entry takes ``60 / requests_per_minute`` seconds of
its endpoint's pace; entries of one endpoint with different limits each take their own share.

:class:`LocalPacer` paces within one process (the collector's default). :class:`SharedPacer` keeps each endpoint's
next free start in a SQLite file (``warehouse.default_pacing_path()``), so every process that opens the same file
shares the pace: the Dagster runs of one instance on one machine. SQLite's locking needs a local filesystem: past
one machine, give each machine's runs their own limit (a share of the provider's) in the catalog.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

__all__ = ["LocalPacer", "Pacer", "SharedPacer", "endpoint_key"]


def endpoint_key(base_url: str) -> str:
    """What identifies an endpoint for pacing: its base URL without a trailing slash."""
    return base_url.rstrip("/")


class Pacer(Protocol):
    """Spaces the request starts of each endpoint."""

    async def wait_turn(self, endpoint: str, interval_s: float) -> None:
        """Return once a request to ``endpoint`` may start, having claimed ``interval_s`` of its pace."""
        ...


class LocalPacer:
    """Paces the requests of this process only (a run sharing an endpoint with no other run)."""

    def __init__(self) -> None:
        self._next_start: dict[str, float] = {}

    async def wait_turn(self, endpoint: str, interval_s: float) -> None:
        now = time.monotonic()
        start = max(now, self._next_start.get(endpoint, now))
        self._next_start[endpoint] = start + interval_s
        await asyncio.sleep(start - now)


class SharedPacer:
    """Paces the requests of every process using the SQLite file at ``path`` (created if missing): each claim is
    one atomic upsert of the endpoint's next free start (wall-clock time, so processes agree), run off the event
    loop. Thread-safe; the connection opens on first use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            for attempt in range(100):  # processes opening a new file at once: switching to WAL skips the busy wait
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                    con.execute("CREATE TABLE IF NOT EXISTS endpoint_pace (endpoint TEXT PRIMARY KEY, next_start REAL)")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        con.close()
                        raise
                    time.sleep(0.01 + random.random() * 0.05)
            self._con = con
        return self._con

    def claim(self, endpoint: str, interval_s: float) -> float:
        """Claim the next free start at ``endpoint`` and ``interval_s`` after it; returns that start (``time.time()``
        seconds, now or later)."""
        with self._lock:
            now = time.time()
            (next_start,) = (
                self._connection()
                .execute(
                    "INSERT INTO endpoint_pace VALUES (?, ?) ON CONFLICT (endpoint) DO UPDATE "
                    "SET next_start = max(next_start, ?) + ? RETURNING next_start",
                    [endpoint, now + interval_s, now, interval_s],
                )
                .fetchone()
            )
        return next_start - interval_s

    async def wait_turn(self, endpoint: str, interval_s: float) -> None:
        start = await asyncio.to_thread(self.claim, endpoint, interval_s)
        await asyncio.sleep(max(0.0, start - time.time()))

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
