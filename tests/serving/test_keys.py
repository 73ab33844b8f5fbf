"""serving.keys: loading hashed keys, constant-time authentication, token buckets and daily spend."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
from datetime import UTC, datetime

import pytest
import yaml

from serving import keys
from serving import ledger as ledger_module
from serving.keys import ANONYMOUS, AuthError, KeyPolicy, KeyStore, LimitError, hash_secret
from serving.ledger import MemoryLedger, SqliteLedger

ALICE = "alice-secret-0123456789abcdef"
BOB = "bob-secret-0123456789abcdef"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_keys(tmp_path, entries, name="keys.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(entries) if name.endswith(".json") else yaml.safe_dump(entries))
    return path


def test_keys_file_yaml_and_json_give_policies(tmp_path):
    entries = [
        {"id": "alice", "sha256": hash_secret(ALICE), "models": ["cheap"], "usd_per_day": 2.5},
        {"id": "bob", "sha256": hash_secret(BOB).upper(), "requests_per_minute": 60},
    ]
    for name in ("keys.yaml", "keys.json"):
        store = KeyStore.load(write_keys(tmp_path, entries, name), environ={})
        assert store.authenticate(ALICE) == KeyPolicy("alice", frozenset({"cheap"}), 2.5, None)
        assert store.authenticate(BOB) == KeyPolicy("bob", None, None, 60.0)
        assert not store.empty


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"id": "bob", "sha256": hash_secret(BOB), "requests_per_minute": "fast"}, "requests_per_minute='fast'"),
        ({"id": "bob", "sha256": hash_secret(BOB), "requests_per_minute": 0}, "requests_per_minute=0"),
        ({"id": "bob", "sha256": hash_secret(BOB), "usd_per_day": -1}, "usd_per_day=-1"),
        ({"id": "bob", "sha256": hash_secret(BOB), "usd_per_day": True}, "usd_per_day=True"),
        ({"id": "bob", "sha256": hash_secret(BOB), "models": "cheap"}, "models='cheap'"),
        ({"id": "b o b", "sha256": hash_secret(BOB)}, "id='b o b'"),
        ({"id": "anonymous", "sha256": hash_secret(BOB)}, "id='anonymous'"),
        ({"id": "alice", "sha256": hash_secret(BOB)}, "id='alice'): defined twice (also keys file"),
        ({"id": "bob", "sha256": hash_secret(ALICE)}, "id='bob'): the same secret as id='alice'"),
    ],
)
def test_a_bad_entry_is_named_with_its_field_and_value(tmp_path, entry, expected):
    path = write_keys(tmp_path, [{"id": "alice", "sha256": hash_secret(ALICE)}, entry])
    with pytest.raises(ValueError, match="keys file") as info:
        KeyStore.load(path, environ={})
    assert expected in str(info.value)
    assert "entry 1" in str(info.value)


@pytest.mark.parametrize("entry", [{"id": "bob", "sha256": BOB}, {"id": "bob", "secret": BOB}])
def test_a_secret_pasted_into_the_file_is_refused_without_repeating_it(tmp_path, entry):
    with pytest.raises(ValueError, match="entry 0") as info:
        KeyStore.load(write_keys(tmp_path, [entry]), environ={})
    assert BOB not in str(info.value)
    assert "serving.keys hash" in str(info.value)


def test_an_unreadable_file_is_one_value_error(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("- id: [unclosed\n")
    with pytest.raises(ValueError, match="keys file"):
        KeyStore.load(path, environ={})
    path.write_text("id: alice\n")
    with pytest.raises(ValueError, match="expected a list"):
        KeyStore.load(path, environ={})


def test_a_keys_file_alias_bomb_or_oversized_file_is_refused_at_once(tmp_path):
    import time

    from tests.conftest import alias_bomb

    path = tmp_path / "keys.yaml"
    path.write_text(alias_bomb("keys: *i\n"))
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"keys file .*alias") as info:
        KeyStore.load(path, environ={})
    assert time.perf_counter() - started < 1.0 and len(str(info.value)) < 300
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(ValueError, match=r"keys file .*above the limit"):
        KeyStore.load(path, environ={})


def test_environment_keys_with_optional_limits():
    store = KeyStore.load(environ={keys.ENV_VAR: f"alice:{ALICE}, bob:{BOB}:1.5:30"})
    assert store.authenticate(ALICE) == KeyPolicy("alice")
    assert store.authenticate(BOB) == KeyPolicy("bob", None, 1.5, 30.0)
    assert KeyStore.load(environ={keys.ENV_VAR: f"bob:{BOB}::30"}).authenticate(BOB).usd_per_day is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"alice:{ALICE},bob", "entry 1"),
        (f"bob:{BOB}:cheap", "usd_per_day='cheap'"),
        ("bob:zq9x", "shorter than 16"),
        (f"bob:{BOB}:1:2:3", "expected id:secret"),
    ],
)
def test_bad_environment_keys_name_the_entry_never_the_secret(value, expected):
    with pytest.raises(ValueError, match=keys.ENV_VAR) as info:
        KeyStore.load(environ={keys.ENV_VAR: value})
    assert expected in str(info.value)
    assert BOB not in str(info.value) and "zq9x" not in str(info.value)


def test_authenticate_refuses_missing_and_wrong_keys_comparing_every_hash(monkeypatch):
    store = KeyStore.load(environ={keys.ENV_VAR: f"alice:{ALICE},bob:{BOB}"})
    compared = []
    real = keys.hmac.compare_digest
    monkeypatch.setattr(keys.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    for bearer in (None, ""):
        with pytest.raises(AuthError) as info:
            store.authenticate(bearer)
        assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    with pytest.raises(AuthError, match="invalid API key"):
        store.authenticate(ALICE + "x")
    assert len(compared) == 2  # both keys, in constant time
    compared.clear()
    assert store.authenticate(ALICE).key_id == "alice"
    assert len(compared) == 2  # no early exit on a match either


def test_an_empty_store_is_anonymous():
    store = KeyStore.load(environ={})
    assert store.empty
    assert store.authenticate(None) is ANONYMOUS
    store.check_rate(ANONYMOUS)
    store.check_spend(ANONYMOUS)


def test_secrets_are_in_no_repr_or_log(caplog):
    caplog.set_level(logging.DEBUG)
    store = KeyStore.load(environ={keys.ENV_VAR: f"alice:{ALICE}"})
    with pytest.raises(AuthError) as info:
        store.authenticate(BOB)
    policy = store.authenticate(ALICE)
    for text in (repr(store), str(store), repr(policy), str(info.value), caplog.text, repr(store._keys)):
        assert ALICE not in text and BOB not in text
        assert hash_secret(ALICE) not in text
    assert "alice" in repr(store)


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request, tmp_path):
    """Each limit test runs on both ledgers: this process's memory and the SQLite file workers share."""
    return MemoryLedger() if request.param == "memory" else SqliteLedger(tmp_path / "ledger.sqlite")


def test_token_bucket_limits_then_recovers(ledger):
    clock = Clock(1000.0)
    store = KeyStore(clock=clock, ledger=ledger)
    policy = KeyPolicy("alice", requests_per_minute=2)
    store.check_rate(policy)
    store.check_rate(policy)
    with pytest.raises(LimitError) as info:
        store.check_rate(policy)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.retry_after_s == pytest.approx(30.0)
    assert info.value.headers["Retry-After"] == "30"
    clock.now += 29.0
    with pytest.raises(LimitError) as info:
        store.check_rate(policy)
    assert info.value.retry_after_s == pytest.approx(1.0)
    clock.now += 1.0
    store.check_rate(policy)  # recovered: one request's worth refilled
    store.check_rate(KeyPolicy("bob", requests_per_minute=2))  # buckets are per key


def test_token_bucket_is_thread_safe(ledger):
    store = KeyStore(clock=Clock(0.0), ledger=ledger)  # no refill: exactly the capacity gets through
    policy = KeyPolicy("alice", requests_per_minute=300)
    passed = []

    def hammer():
        for _ in range(100):
            try:
                store.check_rate(policy)
                passed.append(1)
            except LimitError:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(passed) == 300


def test_spend_limit_per_utc_day(ledger):
    wall = Clock(datetime(2030, 5, 1, 23, 0, tzinfo=UTC).timestamp())
    store = KeyStore(wall_clock=wall, ledger=ledger)
    policy = KeyPolicy("alice", usd_per_day=0.01)
    store.check_spend(policy)
    store.record_spend("alice", 0.004)
    store.check_spend(policy)
    store.record_spend("alice", 0.006)
    assert store.spent_today("alice") == pytest.approx(0.01)
    with pytest.raises(LimitError) as info:
        store.check_spend(policy)
    assert info.value.code == "insufficient_quota"
    assert info.value.retry_after_s == pytest.approx(3600.0)
    assert info.value.headers["Retry-After"] == "3600"
    store.check_spend(KeyPolicy("bob", usd_per_day=0.01))  # per key
    wall.now += 3600.0  # midnight UTC: a new day
    assert store.spent_today("alice") == 0.0
    store.check_spend(policy)
    store.record_spend("alice", 0.002)
    assert store.spent_today("alice") == pytest.approx(0.002)


def test_workers_share_limits_through_the_sqlite_ledger_and_a_restart_keeps_them(tmp_path):
    path, clock = tmp_path / "ledger.sqlite", Clock(1000.0)
    worker_1, worker_2 = (KeyStore(clock=clock, wall_clock=clock, ledger=SqliteLedger(path)) for _ in range(2))
    policy = KeyPolicy("alice", usd_per_day=0.01, requests_per_minute=3)
    for store in (worker_1, worker_2, worker_1):  # three requests, whichever worker takes them
        store.check_rate(policy)
    with pytest.raises(LimitError):
        worker_2.check_rate(policy)
    worker_1.record_spend("alice", 0.006)
    worker_2.record_spend("alice", 0.006)
    restarted = KeyStore(clock=clock, wall_clock=clock, ledger=SqliteLedger(path))
    assert restarted.spent_today("alice") == pytest.approx(0.012)
    with pytest.raises(LimitError, match="spend limit"):
        restarted.check_spend(policy)
    assert KeyStore(wall_clock=clock).spent_today("alice") == 0.0  # memory: what a restart used to forget


@pytest.mark.parametrize("usd", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_record_spend_refuses_a_bad_cost(usd):
    with pytest.raises(ValueError, match="usd="):
        KeyStore().record_spend("alice", usd)


def test_policy_models_and_the_routed_model():
    everything = KeyPolicy("a")
    assert everything.allows("uniroute") and everything.allows("anything")
    cheap = KeyPolicy("c", models=frozenset({"cheap", "generalist"}))
    assert cheap.allows("cheap") and cheap.allows("uniroute") and not cheap.allows("math-pro")
    assert cheap.route_pool(["cheap", "math-pro", "generalist"]) == ["cheap", "generalist"]
    assert cheap.route_pool(["cheap", "math-pro"], requested=["cheap"]) == ["cheap"]
    with pytest.raises(AuthError) as info:
        cheap.route_pool(["cheap", "math-pro"], requested=["math-pro"])
    assert (info.value.status, info.value.param, info.value.code) == (403, "candidates", "model_not_allowed")
    with pytest.raises(AuthError, match="none of the router's LLMs"):
        cheap.route_pool(["math-pro"])
    with pytest.raises(AuthError, match="math-pro") as info:
        cheap.require_model("math-pro")
    assert info.value.param == "model"
    direct_only = KeyPolicy("d", models=frozenset({"cheap", keys.NO_ROUTING}))
    assert not direct_only.allows("uniroute") and direct_only.allows("cheap")
    with pytest.raises(AuthError, match="x" * 20 + r"\.\.\."):  # a client's megabyte is not echoed whole
        cheap.require_model("x" * 100_000)


def test_hash_command_prints_an_entry_the_store_accepts(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO(ALICE + "\n"))
    args = ["hash", "--id", "alice", "--models", "cheap,generalist", "--usd-per-day", "5", "--rpm", "60", "--no-store"]
    assert keys.main(args) == 0
    out = capsys.readouterr().out
    assert ALICE not in out
    path = tmp_path / "keys.yaml"
    path.write_text(out)
    assert KeyStore.load(path, environ={}).authenticate(ALICE) == KeyPolicy(
        "alice", frozenset({"cheap", "generalist"}), 5.0, 60.0, store=False
    )


def test_hash_command_generates_a_secret_and_refuses_a_short_one(monkeypatch, capsys, tmp_path):
    assert keys.main(["hash", "--id", "bob", "--generate"]) == 0
    captured = capsys.readouterr()
    secret = captured.err.rsplit(": ", 1)[1].strip()
    assert secret not in captured.out
    path = tmp_path / "keys.yaml"
    path.write_text(captured.out)
    assert KeyStore.load(path, environ={}).authenticate(secret).key_id == "bob"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert keys.main(["hash", "--id", "bob"]) == 2
    assert "shorter than 16" in capsys.readouterr().err


# ---- spend: reserve, then settle ----


def test_a_hold_admits_while_spend_and_holds_are_under_the_limit_and_settles_the_real_cost(ledger):
    wall = Clock(datetime(2030, 5, 1, 12, 0, tzinfo=UTC).timestamp())
    store = KeyStore(wall_clock=wall, ledger=ledger)
    policy = KeyPolicy("alice", usd_per_day=0.01)
    first = store.reserve(policy, 0.006)
    assert first.remaining_usd == pytest.approx(0.004)
    second = store.reserve(policy, 0.006)  # 0.006 held < 0.01: admitted, the limit passed by one worst case at most
    with pytest.raises(LimitError) as info:
        store.reserve(policy, 0.001)  # 0.012 held: refused while they are in flight
    assert info.value.code == "rate_limit_exceeded" and info.value.headers["Retry-After"] == "1"
    store.settle(first, 0.001)  # the real cost replaces the hold
    store.release(second)  # failed: nothing paid
    assert store.spent_today("alice") == pytest.approx(0.001)
    assert store.remaining(policy) == pytest.approx(0.009)
    store.settle(store.reserve(policy, 0.02), 0.012)
    with pytest.raises(LimitError) as info:
        store.reserve(policy, 0.001)
    assert info.value.code == "insufficient_quota"  # spent, not held: until midnight UTC
    unlimited = store.reserve(KeyPolicy("bob"), 5.0)
    assert unlimited.hold_id is None and store.remaining(KeyPolicy("bob")) is None
    store.settle(unlimited, 0.5)
    assert store.spent_today("bob") == 0.5


def test_a_killed_workers_hold_expires(ledger):
    wall = Clock(datetime(2030, 5, 1, 12, 0, tzinfo=UTC).timestamp())
    store = KeyStore(wall_clock=wall, ledger=ledger)
    policy = KeyPolicy("alice", usd_per_day=0.01)
    store.reserve(policy, 1.0, hold_s=60)  # never settled: its worker died
    with pytest.raises(LimitError):
        store.reserve(policy, 0.001)
    wall.now += 61
    store.reserve(policy, 0.001)


def test_holds_are_atomic_across_connections(tmp_path):
    """Each thread has its own SqliteLedger (its own connection, as each worker process has): 40 at once reserve
    0.004 against 0.01; only those admitted while spend and holds were under the limit get through."""
    path, wall = tmp_path / "ledger.sqlite", Clock(datetime(2030, 5, 1, 12, 0, tzinfo=UTC).timestamp())
    SqliteLedger(path)
    policy, admitted = KeyPolicy("alice", usd_per_day=0.01), []
    barrier = threading.Barrier(40)

    def worker():
        store = KeyStore(wall_clock=wall, ledger=SqliteLedger(path))
        barrier.wait()
        with contextlib.suppress(LimitError):
            admitted.append(store.reserve(policy, 0.004))

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3  # 0, 0.004, 0.008 were under 0.01; then 0.012 is not


def test_a_hold_refuses_a_bad_cost():
    with pytest.raises(ValueError, match="reserve usd=inf"):
        KeyStore().reserve(KeyPolicy("alice", usd_per_day=1.0), float("inf"))


# ---- reloading the keys file ----


def test_a_keys_file_grown_past_the_limit_is_refused_before_it_is_read(tmp_path, caplog):
    import tracemalloc

    path = write_keys(tmp_path, [{"id": "alice", "sha256": hash_secret(ALICE)}])
    store = KeyStore.load(path, environ={})
    with path.open("a") as f:  # 40 MB of comments: a keys file gone wrong
        f.writelines(["# " + "x" * 998 + "\n"] * 40_000)
    caplog.set_level(logging.INFO)
    tracemalloc.start()
    assert not store.reload_if_changed()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000 and "above the limit" in caplog.text  # never read whole
    assert store.authenticate(ALICE).key_id == "alice"


def test_a_changed_keys_file_is_reloaded_and_a_bad_one_keeps_the_keys_with_one_log_line(tmp_path, caplog):
    path = write_keys(
        tmp_path, [{"id": "alice", "sha256": hash_secret(ALICE)}, {"id": "bob", "sha256": hash_secret(BOB)}]
    )
    store = KeyStore.load(path, environ={keys.ENV_VAR: f"carol:{'c' * 20}"})
    assert store.authenticate(BOB).key_id == "bob"
    assert not store.reload_if_changed()  # unchanged
    write_keys(tmp_path, [{"id": "alice", "sha256": hash_secret(ALICE)}])  # bob revoked
    assert store.reload_if_changed()
    with pytest.raises(AuthError):
        store.authenticate(BOB)
    assert store.authenticate("c" * 20).key_id == "carol"  # the environment's keys stay
    caplog.set_level(logging.INFO)
    for _ in range(3):
        path.write_text("- id: [unclosed\n")
        assert not store.reload_if_changed()
    assert caplog.text.count("invalid, keeping the 2 keys in use") == 1
    assert store.authenticate(ALICE).key_id == "alice"
    write_keys(tmp_path, [])  # every file key revoked: nobody from the file, never anonymous
    assert store.reload_if_changed()
    with pytest.raises(AuthError):
        store.authenticate(ALICE)
    with pytest.raises(AuthError):
        store.authenticate(None)


def test_admin_keys_read_operator_pages_and_client_keys_never(tmp_path):
    path = write_keys(
        tmp_path,
        [{"id": "ops", "sha256": hash_secret(BOB), "role": "admin"}, {"id": "alice", "sha256": hash_secret(ALICE)}],
    )
    store = KeyStore.load(path, environ={})
    store.check_admin(BOB, loopback=False)
    with pytest.raises(AuthError) as info:
        store.check_admin(ALICE, loopback=True)
    assert info.value.status == 403
    with pytest.raises(AuthError) as info:
        store.check_admin(None, loopback=True)  # an admin key exists: it is needed
    assert info.value.status == 401
    plain = KeyStore.load(environ={keys.ENV_VAR: f"alice:{ALICE}"})
    plain.check_admin(None, loopback=True)  # no admin configured: loopback only
    with pytest.raises(AuthError):
        plain.check_admin(None, loopback=False)
    with pytest.raises(AuthError):
        plain.check_admin(ALICE, loopback=True)
    by_env = KeyStore.load(environ={keys.ADMIN_ENV: "o" * 20, keys.ENV_VAR: f"alice:{ALICE}"})
    by_env.check_admin("o" * 20, loopback=False)
    with pytest.raises(AuthError, match="admin key required"):
        by_env.check_admin(None, loopback=True)
    with pytest.raises(ValueError, match="role='root'"):
        KeyStore.load(write_keys(tmp_path, [{"id": "x", "sha256": hash_secret(ALICE), "role": "root"}]), environ={})


# ---- the ledger's work per request ----


def traced(store: KeyStore) -> list[str]:
    """The SQL statements ``store``'s SqliteLedger runs from now on, in this thread."""
    statements: list[str] = []
    store._ledger._connection().set_trace_callback(lambda sql: statements.append(sql.split()[0].upper()))
    return statements


def test_a_spend_limited_request_costs_the_ledger_a_reserve_and_a_settle_only(tmp_path):
    """Two IMMEDIATE transactions per request (check and hold; settle), not a spend read and a sweep of expired
    holds besides; the sweep still runs once per HOLD_SWEEP_S, and an expired hold never counts meanwhile."""
    wall = Clock(datetime(2030, 5, 1, 12, 0, tzinfo=UTC).timestamp())
    store = KeyStore(clock=wall, wall_clock=wall, ledger=SqliteLedger(tmp_path / "ledger.sqlite"))
    policy = KeyPolicy("alice", usd_per_day=0.01)
    store.settle(store.reserve(policy, 0.001), 0.001)  # the first sweeps
    statements = traced(store)
    for _ in range(3):
        store.check_spend(policy, keys.SPEND_RECHECK_S)  # the middleware's early check: read once per interval
        store.settle(store.reserve(policy, 0.001), 0.0001)
    request = ["BEGIN", "SELECT", "INSERT", "COMMIT", "BEGIN", "DELETE", "INSERT", "COMMIT"]
    assert statements == ["SELECT", *request * 3]
    store.reserve(policy, 1.0, hold_s=5)  # a killed worker's hold, expired before the next sweep
    wall.now += 10
    assert store.reserve(policy, 0.001).remaining_usd == pytest.approx(0.01 - 0.0013 - 0.001)
    wall.now += ledger_module.HOLD_SWEEP_S
    statements.clear()
    store.reserve(policy, 0.001)
    assert statements[:2] == ["BEGIN", "DELETE"]
    con = store._ledger._connection()
    assert con.execute("SELECT COUNT(*) FROM holds WHERE usd = 1.0").fetchone()[0] == 0


def test_the_early_spend_check_reads_once_per_interval_and_never_refuses_what_the_ledger_admits(tmp_path):
    """What it costs: a key spent by another worker passes this worker's early check for up to SPEND_RECHECK_S,
    and reserve (the limit's one authority) refuses it; what this worker spends or learns counts at once."""
    path, wall = tmp_path / "ledger.sqlite", Clock(datetime(2030, 5, 1, 12, 0, tzinfo=UTC).timestamp())
    this, other = (KeyStore(clock=wall, wall_clock=wall, ledger=SqliteLedger(path)) for _ in range(2))
    policy = KeyPolicy("alice", usd_per_day=0.01)
    this.check_spend(policy, 1.0)
    other.record_spend("alice", 0.02)
    this.check_spend(policy, 1.0)  # read 0.0 under a second ago: admitted here...
    with pytest.raises(LimitError) as info:
        this.reserve(policy, 0.001)  # ...and refused before anything is paid for
    assert info.value.code == "insufficient_quota"
    statements = traced(this)
    with pytest.raises(LimitError, match="spend limit"):
        this.check_spend(policy, 1.0)  # what reserve read: no second read
    assert statements == []
    fresh = KeyStore(clock=wall, wall_clock=wall, ledger=SqliteLedger(path))
    fresh.check_spend(KeyPolicy("alice", usd_per_day=1.0), 1.0)
    fresh.record_spend("alice", 0.99)  # its own spend counts at once
    with pytest.raises(LimitError):
        fresh.check_spend(KeyPolicy("alice", usd_per_day=1.0), 1.0)
    wall.now += 1.0
    statements.clear()
    this.check_spend(KeyPolicy("alice", usd_per_day=2.0), 1.0)  # a raised limit; the interval over: read again
    assert statements == ["SELECT"]
