"""Where the gateway keeps each client key's rate-limit bucket and its spend per UTC day.

:class:`MemoryLedger` keeps them in this process (tests, a single short-lived gateway). :class:`SqliteLedger`
keeps them in a SQLite file (WAL mode) that every worker of ``uniroute serve --workers N`` shares, so a key's
limits hold across workers and survive a restart: a gateway restarted at noon does not hand out a second day's
budget. Each operation is one short transaction (well under a millisecond here); buckets use wall-clock time,
the same in every process.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

__all__ = ["Ledger", "MemoryLedger", "SqliteLedger"]


class Ledger(Protocol):
    def take(self, key_id: str, rate: float, capacity: float, now: float) -> float:
        """Take one token from ``key_id``'s bucket (``rate`` tokens/s, at most ``capacity``); 0.0 when taken,
        else the seconds until one is there."""

    def add_spend(self, key_id: str, day: str, usd: float) -> None:
        """Add ``usd`` to ``key_id``'s spend on ``day`` (ISO date, UTC)."""

    def spent(self, key_id: str, day: str) -> float:
        """``key_id``'s spend on ``day``."""


def _refill(tokens: float, updated: float, rate: float, capacity: float, now: float) -> tuple[float, float]:
    """(tokens left after taking one or not, seconds to wait: 0.0 when one was taken)."""
    tokens = min(capacity, tokens + max(0.0, now - updated) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class MemoryLedger:
    """Buckets and spend in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held for microseconds, never across an await
        self._buckets: dict[str, tuple[float, float]] = {}  # key_id -> (tokens, updated)
        self._spend: dict[tuple[str, str], float] = {}

    def take(self, key_id: str, rate: float, capacity: float, now: float) -> float:
        with self._lock:
            tokens, updated = self._buckets.get(key_id, (capacity, now))
            tokens, wait = _refill(tokens, updated, rate, capacity, now)
            self._buckets[key_id] = (tokens, now)
        return wait

    def add_spend(self, key_id: str, day: str, usd: float) -> None:
        with self._lock:
            self._spend[key_id, day] = self._spend.get((key_id, day), 0.0) + usd

    def spent(self, key_id: str, day: str) -> float:
        with self._lock:
            return self._spend.get((key_id, day), 0.0)


class SqliteLedger:
    """Buckets and spend in a SQLite file shared by processes; one connection per thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(
            "CREATE TABLE IF NOT EXISTS spend (key_id TEXT, day TEXT, usd REAL NOT NULL, PRIMARY KEY (key_id, day));"
            "CREATE TABLE IF NOT EXISTS buckets (key_id TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL);"
        )

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a crash of the process, not of the OS
            self._local.con = con
        return con

    def take(self, key_id: str, rate: float, capacity: float, now: float) -> float:
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")  # the read and the write of one bucket are one step for every worker
        try:
            row = con.execute("SELECT tokens, updated FROM buckets WHERE key_id = ?", (key_id,)).fetchone()
            tokens, wait = _refill(*(row or (capacity, now)), rate, capacity, now)
            con.execute(
                "INSERT INTO buckets VALUES (?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET tokens = ?, updated = ?",
                (key_id, tokens, now, tokens, now),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return wait

    def add_spend(self, key_id: str, day: str, usd: float) -> None:
        self._connection().execute(
            "INSERT INTO spend VALUES (?, ?, ?) ON CONFLICT (key_id, day) DO UPDATE SET usd = usd + excluded.usd",
            (key_id, day, usd),
        )

    def spent(self, key_id: str, day: str) -> float:
        row = self._connection().execute("SELECT usd FROM spend WHERE key_id = ? AND day = ?", (key_id, day)).fetchone()
        return row[0] if row else 0.0
