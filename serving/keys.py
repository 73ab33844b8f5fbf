"""Client API keys of the gateway: who may call it, which models each key reaches, and its rate and spend limits.

Keys come from a file of *hashed* keys and/or the environment:

- ``--keys-file keys.yaml`` (YAML or JSON): a list of ``{id, sha256, models?, usd_per_day?, requests_per_minute?}``
  where ``sha256`` is the hex SHA-256 of the secret. The file never holds a secret; make an entry with::

      python -m serving.keys hash --id alice --usd-per-day 5 --rpm 60   # reads the secret from stdin
      python -m serving.keys hash --id alice --generate                 # new secret on stderr, entry on stdout

  and paste the printed entry into the file. ``models`` lists the catalog LLMs a key may call directly and route
  to; the routed model ``uniroute`` is allowed (over those LLMs only) unless the list names ``"!uniroute"``.
- ``UNIROUTE_GATEWAY_KEYS="alice:SECRET,bob:SECRET2:5.0:60"``: comma-separated ``id:secret`` pairs, optionally
  ``id:secret:usd_per_day:requests_per_minute`` (either may be left empty), for tests and simple deployments.

- ``role: admin`` in a file entry, or a secret in ``$UNIROUTE_ADMIN_KEY``, is an operator's key: it may read
  ``/metrics`` (:meth:`KeyStore.check_admin`); without any, ``/metrics`` answers loopback peers only.

Secrets are hashed as soon as they are read and compared by hash in constant time (``hmac.compare_digest``); no
secret is kept, logged, put in an exception or shown by ``repr``. Spend is reserved, then settled, per UTC day
(:meth:`KeyStore.reserve`): a request is admitted while the key's spend plus the worst cases held by its requests
in flight is under its limit, so concurrent requests, in every worker, pass a limit by one request's worst case at
most. Rate limits are a token bucket per key (a minute's worth of burst). The keys file is re-read when it changes
(:meth:`KeyStore.reload_if_changed`), so a key removed from it is refused from the next check on.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from serving.key_policy import (  # noqa: F401 (this module's public names before the split)
    ADMIN_ROLE,
    ANONYMOUS,
    ANONYMOUS_ID,
    ENV_VAR,
    MIN_SECRET_CHARS,
    NO_ROUTING,
    AuthError,
    ClientError,
    ClientKey,
    KeyPolicy,
    LimitError,
    hash_secret,
    parse_entry,
    parse_env_keys,
    parse_keys_file,
    unique_keys,
)
from serving.ledger import Ledger, MemoryLedger
from warehouse.userfiles import UserFileError, check_size

log = logging.getLogger(__name__)

ADMIN_ENV = "UNIROUTE_ADMIN_KEY"  # an operator's secret: reads /metrics (not a client key)
#: How long a request in flight holds a key's budget at most when no other bound is given (a killed worker's holds
#: expire after it).
DEFAULT_HOLD_S = 3600.0
#: The middleware's early spend refusal reads a key's spend from the ledger at most this often (seconds) per
#: process; between reads it uses what this process read and added since (spend only grows within a day).
SPEND_RECHECK_S = 1.0


@dataclass(frozen=True)
class Hold:
    """A request's worst-case cost reserved on its key's budget of ``day``: settle it with the real cost
    (:meth:`KeyStore.settle`) or release it (:meth:`KeyStore.release`). ``hold_id`` None: the key has no spend
    limit, nothing is held. ``remaining_usd``: the key's budget left once this hold is counted (None: no limit)."""

    key_id: str
    day: str
    usd: float
    hold_id: str | None = None
    remaining_usd: float | None = None


class KeyStore:
    """The gateway's client keys and each key's request and spend counters (thread- and async-safe).

    ``KeyStore.load(path, environ)`` reads a keys file and ``$UNIROUTE_GATEWAY_KEYS``; an empty store lets every
    request through as ``ANONYMOUS`` (the gateway then binds loopback only: ``serving.middleware.check_bind``).
    Counters live in ``ledger`` (:mod:`serving.ledger`): this process's memory by default, or a SQLite file that
    all workers share and a restart keeps. ``clock`` (seconds; default the wall clock, the same in every process)
    and ``wall_clock`` (Unix seconds, for the UTC day) are injectable for tests.
    """

    def __init__(
        self,
        keys: Iterable[ClientKey] = (),
        *,
        clock: Callable[[], float] = time.time,
        wall_clock: Callable[[], float] = time.time,
        ledger: Ledger | None = None,
    ) -> None:
        self._keys = unique_keys(keys)
        self._anonymous = not self._keys  # decided once: revoking every key later refuses everyone
        self._clock = clock
        self._wall_clock = wall_clock
        self._ledger = ledger if ledger is not None else MemoryLedger()
        self._admin_digest: bytes | None = None
        self._path: Path | None = None
        self._env_keys: tuple[ClientKey, ...] = ()
        self._signature: tuple[int, int] | None = None
        self._content: bytes | None = None
        self._spend_seen: dict[str, tuple[str, float, float]] = {}  # key_id -> (day, spend at least, read at)

    # ---- loading ----
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        ledger: Ledger | None = None,
        **clocks: Callable[[], float],
    ) -> KeyStore:
        """Keys from the file at ``path`` (if given) and from ``environ[UNIROUTE_GATEWAY_KEYS]`` (os.environ)."""
        environ = os.environ if environ is None else environ
        env_keys = parse_env_keys(environ.get(ENV_VAR, ""))
        content = Path(path).read_bytes() if path is not None and Path(path).is_file() else None
        keys = [*(parse_keys_file(path, content) if path is not None else []), *env_keys]
        store = cls(keys, ledger=ledger, **clocks)
        store._env_keys = tuple(env_keys)
        if path is not None:
            store._path, store._content, store._signature = Path(path), content, _signature(Path(path))
        admin = environ.get(ADMIN_ENV, "").strip()
        if admin:
            if len(admin) < MIN_SECRET_CHARS:
                raise ValueError(f"{ADMIN_ENV}: the secret is shorter than {MIN_SECRET_CHARS} characters")
            store._admin_digest = hashlib.sha256(admin.encode("utf-8")).digest()
        log.info("client keys: %d configured (ids %s)", len(keys), [k.policy.key_id for k in keys])
        return store

    def reload_if_changed(self) -> bool:
        """Re-read the keys file when its size, modification time and content changed; True when the keys were
        replaced. A file that no longer parses keeps the keys in use and logs one line (once per bad content)."""
        if self._path is None:
            return False
        signature = _signature(self._path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            content = check_size(self._path).read_bytes()  # a file over the limit is refused before it is read
        except (OSError, UserFileError) as exc:
            log.error("keys file %s: cannot be read, keeping the %d keys in use (%s)", self._path, len(self._keys), exc)
            return False
        if content == self._content:
            return False
        self._content = content
        try:
            keys = unique_keys([*parse_keys_file(self._path, content), *self._env_keys])
        except ValueError as exc:
            log.error("keys file %s: invalid, keeping the %d keys in use: %s", self._path, len(self._keys), exc)
            return False
        self._keys = keys
        log.info("client keys reloaded from %s: %d configured (ids %s)", self._path, len(keys), self.key_ids)
        return True

    @property
    def empty(self) -> bool:
        """No keys configured: every request is anonymous."""
        return not self._keys

    @property
    def key_ids(self) -> list[str]:
        return [k.policy.key_id for k in self._keys]

    def __repr__(self) -> str:
        return f"KeyStore({len(self._keys)} keys: {self.key_ids})"

    # ---- requests ----
    def authenticate(self, bearer: str | None) -> KeyPolicy:
        """The policy of the key whose secret is ``bearer`` (the token after ``Bearer``); ``AuthError`` 401 if none.

        Every configured key's hash is compared, in constant time, so timing says nothing about which is close.
        """
        if self._anonymous:
            return ANONYMOUS
        if not bearer:
            raise AuthError(401, "missing API key: send the header 'Authorization: Bearer <key>'", "invalid_api_key")
        digest = hashlib.sha256(bearer.encode("utf-8", "surrogateescape")).digest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise AuthError(401, "invalid API key", "invalid_api_key")
        return found.policy

    @property
    def admin_configured(self) -> bool:
        """An operator's key exists ($UNIROUTE_ADMIN_KEY or a keys-file entry with ``role: admin``)."""
        return self._admin_digest is not None or any(k.policy.admin for k in self._keys)

    def check_admin(self, bearer: str | None, loopback: bool) -> None:
        """May this caller read the operator's pages (``/metrics``, which list key ids and their spend)? An admin
        key always may; a client key never (403); without a key, a loopback peer may when no admin key is
        configured (401 otherwise, 403 for any other peer)."""
        if bearer:
            digest = hashlib.sha256(bearer.encode("utf-8", "surrogateescape")).digest()
            if self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest):
                return
            if not self._anonymous:
                policy = self.authenticate(bearer)
                if policy.admin:
                    return
                raise AuthError(403, f"key {policy.key_id!r}: not an admin key", "admin_required")
        if self.admin_configured:
            raise AuthError(401, "admin key required: send 'Authorization: Bearer <admin key>'", "invalid_api_key")
        if not loopback:
            raise AuthError(
                403, f"loopback only: configure an admin key (${ADMIN_ENV} or role: {ADMIN_ROLE})", "admin_required"
            )

    def check_rate(self, policy: KeyPolicy) -> int | None:
        """Take one request from the key's bucket: the requests left in it (None: no rate limit); ``LimitError``
        (code ``rate_limit_exceeded``) when empty."""
        rpm = policy.requests_per_minute
        if rpm is None:
            return None
        rate = rpm / 60.0  # tokens per second
        wait, left = self._ledger.take(policy.key_id, rate, max(1.0, rpm), self._clock())  # a minute's burst at most
        if wait == 0.0:
            return math.floor(left)
        raise LimitError(
            f"rate limit of key {policy.key_id!r}: {rpm:g} requests per minute; retry in {wait:.1f} s",
            "rate_limit_exceeded",
            wait,
        )

    def check_spend(self, policy: KeyPolicy, max_age_s: float = 0.0) -> None:
        """``LimitError`` (code ``insufficient_quota``, retry at the next UTC midnight) once today's spend is over.

        ``max_age_s`` > 0: the spend as this process read it from the ledger within the last ``max_age_s``
        seconds, plus what it settled since (one read per key per interval, not one per request: the middleware's
        early refusal). A spend only grows within a day, so this never refuses a key the ledger would admit; a key
        spent by another worker meanwhile is refused by :meth:`reserve`, the check that holds the limit.
        """
        limit = policy.usd_per_day
        if limit is None:
            return
        spent = self._known_spend(policy.key_id, max_age_s)
        if spent >= limit:
            raise self._spent(policy, spent)

    def _known_spend(self, key_id: str, max_age_s: float) -> float:
        day, now = self._day(), self._clock()
        seen = self._spend_seen.get(key_id)
        if seen is not None and seen[0] == day and 0.0 <= now - seen[2] < max_age_s:
            return seen[1]
        spent = self._ledger.spent(key_id, day)
        self._spend_seen[key_id] = (day, spent, now)
        return spent

    def _add_seen(self, key_id: str, day: str, usd: float) -> None:
        """This process added ``usd`` to the key's spend of ``day``: what it knows of the spend grows with it."""
        seen = self._spend_seen.get(key_id)
        if seen is not None and seen[0] == day:
            self._spend_seen[key_id] = (day, seen[1] + usd, seen[2])

    def _spent(self, policy: KeyPolicy, spent: float) -> LimitError:
        now = self._wall_clock()
        today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return LimitError(
            f"spend limit of key {policy.key_id!r}: ${spent:.6g} of ${policy.usd_per_day:g} per day (UTC) used; "
            "it resets at midnight UTC",
            "insufficient_quota",
            (today + timedelta(days=1)).timestamp() - now,
        )

    def reserve(self, policy: KeyPolicy, usd: float, hold_s: float = DEFAULT_HOLD_S) -> Hold:
        """Hold ``usd`` (the request's worst case) of the key's budget of today, for ``hold_s`` seconds at most.

        Admitted while the key's spend plus its holds is under its limit, checked and held in one transaction of
        the ledger. ``LimitError`` 429 otherwise: ``insufficient_quota`` when the spend alone is over the limit,
        else ``rate_limit_exceeded`` (the budget is held by requests in flight; retry in a second).
        """
        _check_usd("reserve", usd)
        day, limit = self._day(), policy.usd_per_day
        if limit is None:
            return Hold(policy.key_id, day, float(usd))
        now = self._wall_clock()
        hold_id, before = self._ledger.reserve(policy.key_id, day, float(usd), limit, now, now + hold_s)
        if hold_id is None:
            spent = self._ledger.spent(policy.key_id, day)
            self._spend_seen[policy.key_id] = (day, spent, self._clock())
            if spent >= limit:
                raise self._spent(policy, spent)
            raise LimitError(
                f"spend limit of key {policy.key_id!r}: ${before:.6g} of ${limit:g} per day (UTC) spent or held by "
                "requests in flight",
                "rate_limit_exceeded",
                1.0,
            )
        return Hold(policy.key_id, day, float(usd), hold_id, limit - before - usd)

    def settle(self, hold: Hold, usd: float) -> None:
        """The request's real cost replaces its hold (one transaction)."""
        _check_usd("settle", usd)
        if hold.hold_id is None:
            self._ledger.add_spend(hold.key_id, hold.day, float(usd))
        else:
            self._ledger.settle(hold.hold_id, hold.key_id, hold.day, float(usd))
        self._add_seen(hold.key_id, hold.day, float(usd))

    def release(self, hold: Hold) -> None:
        """The request was not paid for: give its hold back."""
        if hold.hold_id is not None:
            self._ledger.release(hold.hold_id)

    def remaining(self, policy: KeyPolicy) -> float | None:
        """USD the key may still commit today (its limit less its spend and holds); None without a limit."""
        if policy.usd_per_day is None:
            return None
        committed = self._ledger.committed(policy.key_id, self._day(), self._wall_clock())
        return max(0.0, policy.usd_per_day - committed)

    def record_spend(self, key_id: str, usd: float) -> None:
        """Add a request's realised cost (USD) to the key's spend of today (UTC), with no hold."""
        _check_usd("record_spend", usd)
        day = self._day()
        self._ledger.add_spend(key_id, day, float(usd))
        self._add_seen(key_id, day, float(usd))

    def spent_today(self, key_id: str) -> float:
        """USD the key has spent today (UTC)."""
        return self._ledger.spent(key_id, self._day())

    def _day(self) -> str:
        return datetime.fromtimestamp(self._wall_clock(), UTC).date().isoformat()


def _check_usd(what: str, usd: object) -> None:
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{what} usd={usd!r}: expected a finite cost >= 0")


def _signature(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size) of ``path``; None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


# ---- python -m serving.keys hash ----
def _entry(args: argparse.Namespace, secret: str) -> str:
    entry: dict = {"id": args.id, "sha256": hash_secret(secret)}
    if args.models:
        entry["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.usd_per_day is not None:
        entry["usd_per_day"] = args.usd_per_day
    if args.rpm is not None:
        entry["requests_per_minute"] = args.rpm
    if args.no_store:
        entry["store"] = False
    for name in ("cost_weight", "max_cost_per_query", "min_accuracy"):  # the tenant's routing policy
        if getattr(args, name) is not None:
            entry[name] = getattr(args, name)
    if args.candidates:
        entry["candidates"] = [m.strip() for m in args.candidates.split(",") if m.strip()]
    parse_entry(entry, "the new entry")  # the printed line is one the store accepts
    return yaml.safe_dump([entry], sort_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.keys", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("hash", help="print a keys-file entry for a secret read from stdin (never stored)")
    cmd.add_argument("--id", required=True, help="the key's public id (logs, metrics, errors)")
    cmd.add_argument("--models", help="comma-separated LLMs the key may use (default: all); !uniroute: no routing")
    cmd.add_argument("--usd-per-day", type=float, help="spend limit per UTC day, USD")
    cmd.add_argument("--rpm", type=float, help="requests per minute")
    cmd.add_argument("--cost-weight", dest="cost_weight", type=float, help="the key's default cost weight (a floor)")
    cmd.add_argument("--max-cost", dest="max_cost_per_query", type=float, help="the key's budget, USD per query")
    cmd.add_argument("--min-accuracy", dest="min_accuracy", type=float, help="the key's budget as an accuracy")
    cmd.add_argument("--candidates", help="comma-separated LLMs the key routes among (requests may narrow them)")
    cmd.add_argument("--no-store", action="store_true", help="never sample this key's traffic (store: false)")
    cmd.add_argument("--generate", action="store_true", help="make a new secret (printed on stderr) instead")
    args = parser.parse_args(argv)
    if args.generate:
        secret = "ur-" + secrets.token_urlsafe(32)
        print(f"secret for {args.id} (give it to the client; only its hash is kept): {secret}", file=sys.stderr)
    elif sys.stdin.isatty():
        secret = getpass.getpass("secret: ").strip()
    else:
        secret = sys.stdin.readline().strip()
    if len(secret) < MIN_SECRET_CHARS:
        print(f"error: the secret is shorter than {MIN_SECRET_CHARS} characters", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(_entry(args, secret))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
