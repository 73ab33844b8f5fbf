"""Where the gateway keeps each client key's rate-limit bucket, its spend per UTC day and its spend holds.

:class:`MemoryLedger` keeps them in this process (tests, a single short-lived gateway). :class:`SqliteLedger`
keeps them in a SQLite file (WAL mode) that every worker of ``uniroute serve --workers N`` shares, so a key's
limits hold across workers and survive a restart: a gateway restarted at noon does not hand out a second day's
budget. Each operation is one short transaction (well under a millisecond here); buckets use wall-clock time,
the same in every process.

Spend is **reserved, then settled**, as payment systems authorise a worst case and capture the real amount: a
request admitted holds its worst-case cost (:meth:`Ledger.reserve`, the check and the hold one IMMEDIATE
transaction, so concurrent requests of every worker see each other's holds); its answer settles the real cost
(:meth:`Ledger.settle`: the hold goes, the spend grows, in one transaction); a failure releases the hold. A hold
of a worker killed mid-request expires at its ``expires`` time.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Protocol

__all__ = ["HOLD_SWEEP_S", "Ledger", "MemoryLedger", "SqliteLedger"]

#: How often (seconds of the callers' clock) a ledger deletes the expired holds of killed workers: they count for
#: nothing once expired (every read filters on ``expires``), so the sweep is housekeeping, not once per request.
HOLD_SWEEP_S = 60.0


class Ledger(Protocol):
    def take(self, key_id: str, rate: float, capacity: float, now: float) -> tuple[float, float]:
        """Take one token from ``key_id``'s bucket (``rate`` tokens/s, at most ``capacity``): (seconds until one is
        there, 0.0 when taken; tokens left)."""

    def add_spend(self, key_id: str, day: str, usd: float) -> None:
        """Add ``usd`` to ``key_id``'s spend on ``day`` (ISO date, UTC)."""

    def spent(self, key_id: str, day: str) -> float:
        """``key_id``'s spend on ``day``."""

    def reserve(
        self, key_id: str, day: str, usd: float, limit: float, now: float, expires: float
    ) -> tuple[str | None, float]:
        """Hold ``usd`` of ``key_id``'s ``day`` when its spend plus its live holds (those expiring after ``now``) is
        under ``limit``: (the hold's id, or None when refused; spend plus holds before this one)."""

    def settle(self, hold_id: str, key_id: str, day: str, usd: float) -> None:
        """Drop the hold (if it has not expired) and add ``usd`` to ``key_id``'s spend on ``day``, at once."""

    def release(self, hold_id: str) -> None:
        """Drop the hold: the request was not paid for."""

    def committed(self, key_id: str, day: str, now: float) -> float:
        """``key_id``'s spend on ``day`` plus its live holds."""


def _refill(tokens: float, updated: float, rate: float, capacity: float, now: float) -> tuple[float, float]:
    """(tokens left after taking one or not, seconds to wait: 0.0 when one was taken)."""
    tokens = min(capacity, tokens + max(0.0, now - updated) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


def _hold_id() -> str:
    return uuid.uuid4().hex


class MemoryLedger:
    """Buckets, spend and holds in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held for microseconds, never across an await
        self._buckets: dict[str, tuple[float, float]] = {}  # key_id -> (tokens, updated)
        self._spend: dict[tuple[str, str], float] = {}
        self._holds: dict[str, tuple[str, str, float, float]] = {}  # id -> (key_id, day, usd, expires)

    def take(self, key_id: str, rate: float, capacity: float, now: float) -> tuple[float, float]:
        with self._lock:
            tokens, updated = self._buckets.get(key_id, (capacity, now))
            tokens, wait = _refill(tokens, updated, rate, capacity, now)
            self._buckets[key_id] = (tokens, now)
        return wait, tokens

    def add_spend(self, key_id: str, day: str, usd: float) -> None:
        with self._lock:
            self._spend[key_id, day] = self._spend.get((key_id, day), 0.0) + usd

    def spent(self, key_id: str, day: str) -> float:
        with self._lock:
            return self._spend.get((key_id, day), 0.0)

    def _committed(self, key_id: str, day: str, now: float) -> float:
        held = sum(h[2] for h in self._holds.values() if h[:2] == (key_id, day) and h[3] > now)
        return self._spend.get((key_id, day), 0.0) + held

    def reserve(
        self, key_id: str, day: str, usd: float, limit: float, now: float, expires: float
    ) -> tuple[str | None, float]:
        with self._lock:
            self._holds = {i: h for i, h in self._holds.items() if h[3] > now}
            before = self._committed(key_id, day, now)
            if before >= limit:
                return None, before
            hold_id = _hold_id()
            self._holds[hold_id] = (key_id, day, usd, expires)
            return hold_id, before

    def settle(self, hold_id: str, key_id: str, day: str, usd: float) -> None:
        with self._lock:
            self._holds.pop(hold_id, None)
            self._spend[key_id, day] = self._spend.get((key_id, day), 0.0) + usd

    def release(self, hold_id: str) -> None:
        with self._lock:
            self._holds.pop(hold_id, None)

    def committed(self, key_id: str, day: str, now: float) -> float:
        with self._lock:
            return self._committed(key_id, day, now)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spend (key_id TEXT, day TEXT, usd REAL NOT NULL, PRIMARY KEY (key_id, day));"
    "CREATE TABLE IF NOT EXISTS buckets (key_id TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS holds (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, day TEXT NOT NULL,"
    " usd REAL NOT NULL, expires REAL NOT NULL);"
    "CREATE INDEX IF NOT EXISTS holds_by_key ON holds (key_id, day);"
)
_COMMITTED = (
    "SELECT COALESCE((SELECT usd FROM spend WHERE key_id = ?1 AND day = ?2), 0.0)"
    " + COALESCE((SELECT SUM(usd) FROM holds WHERE key_id = ?1 AND day = ?2 AND expires > ?3), 0.0)"
)


class SqliteLedger:
    """Buckets, spend and holds in a SQLite file shared by processes; one connection per thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._swept_at = -math.inf  # the last sweep of expired holds (HOLD_SWEEP_S)
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a crash of the process, not of the OS
            self._local.con = con
        return con

    def _immediate(self, steps):
        """Run ``steps(con)`` in one IMMEDIATE transaction: its reads and writes are one step for every worker."""
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            result = steps(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return result

    def take(self, key_id: str, rate: float, capacity: float, now: float) -> tuple[float, float]:
        def steps(con: sqlite3.Connection) -> tuple[float, float]:
            row = con.execute("SELECT tokens, updated FROM buckets WHERE key_id = ?", (key_id,)).fetchone()
            tokens, wait = _refill(*(row or (capacity, now)), rate, capacity, now)
            con.execute(
                "INSERT INTO buckets VALUES (?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET tokens = ?, updated = ?",
                (key_id, tokens, now, tokens, now),
            )
            return wait, tokens

        return self._immediate(steps)

    def add_spend(self, key_id: str, day: str, usd: float) -> None:
        self._connection().execute(
            "INSERT INTO spend VALUES (?, ?, ?) ON CONFLICT (key_id, day) DO UPDATE SET usd = usd + excluded.usd",
            (key_id, day, usd),
        )

    def spent(self, key_id: str, day: str) -> float:
        row = self._connection().execute("SELECT usd FROM spend WHERE key_id = ? AND day = ?", (key_id, day)).fetchone()
        return row[0] if row else 0.0

    def reserve(
        self, key_id: str, day: str, usd: float, limit: float, now: float, expires: float
    ) -> tuple[str | None, float]:
        def steps(con: sqlite3.Connection) -> tuple[str | None, float]:
            if not now - HOLD_SWEEP_S < self._swept_at <= now:
                con.execute("DELETE FROM holds WHERE expires <= ?", (now,))  # a killed worker's holds
                self._swept_at = now
            before = con.execute(_COMMITTED, (key_id, day, now)).fetchone()[0]
            if before >= limit:
                return None, before
            hold_id = _hold_id()
            con.execute("INSERT INTO holds VALUES (?, ?, ?, ?, ?)", (hold_id, key_id, day, usd, expires))
            return hold_id, before

        return self._immediate(steps)

    def settle(self, hold_id: str, key_id: str, day: str, usd: float) -> None:
        def steps(con: sqlite3.Connection) -> None:
            con.execute("DELETE FROM holds WHERE id = ?", (hold_id,))
            self.add_spend(key_id, day, usd)

        self._immediate(steps)

    def release(self, hold_id: str) -> None:
        self._connection().execute("DELETE FROM holds WHERE id = ?", (hold_id,))

    def committed(self, key_id: str, day: str, now: float) -> float:
        return self._connection().execute(_COMMITTED, (key_id, day, now)).fetchone()[0]
