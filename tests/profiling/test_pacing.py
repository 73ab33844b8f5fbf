"""Pacing per endpoint: requests_per_minute holds across runs (processes) and across catalog entries of one base_url."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import polars as pl
import pytest

import warehouse as wh
from profiling.collector import RetryPolicy, run_collection
from profiling.importers import import_mmlu_pro
from profiling.pacing import LocalPacer, SharedPacer, endpoint_key
from profiling.staging import StagingSink
from replay import ReplayServer

INTERVAL = 0.05


def _claim_starts(path: str, endpoint: str, n: int) -> list[float]:
    """In a process of its own: claim ``n`` starts back to back; their wall-clock times."""
    pacer = SharedPacer(path)
    starts = [pacer.claim(endpoint, INTERVAL) for _ in range(n)]
    pacer.close()
    return starts


def _gaps(starts: list[float]) -> list[float]:
    ordered = sorted(starts)
    return [b - a for a, b in itertools.pairwise(ordered)]


def test_processes_sharing_a_pacing_file_share_each_endpoints_pace(tmp_path):
    path = str(tmp_path / "pace.sqlite")
    with ProcessPoolExecutor(3) as pool:
        runs = list(pool.map(_claim_starts, [path] * 3, ["http://a/v1"] * 3, [15] * 3))
    starts = [s for run in runs for s in run]
    assert len(starts) == 45
    assert min(_gaps(starts)) >= INTERVAL - 1e-6  # one pace for the three processes, never two starts at once
    assert max(starts) - min(starts) == pytest.approx(44 * INTERVAL, abs=0.2)  # and no slower than the pace


def _claim_together(path: str, barrier) -> float:
    barrier.wait()
    return _claim_starts(path, "http://a/v1", 1)[0]


def test_processes_opening_a_new_pacing_file_at_once_all_get_their_turn(tmp_path):
    # runs launched together open the file together: setting it up (WAL) must wait its turn, not fail "locked"
    with multiprocessing.Manager() as manager, ProcessPoolExecutor(8) as pool:
        barrier = manager.Barrier(8)
        for attempt in range(10):
            path = str(tmp_path / f"pace-{attempt}.sqlite")
            starts = list(pool.map(_claim_together, [path] * 8, [barrier] * 8))
            assert min(_gaps(starts)) >= INTERVAL - 1e-6


def test_endpoints_keep_paces_of_their_own(tmp_path):
    pacer = SharedPacer(tmp_path / "pace.sqlite")
    now = time.time()
    waits = [pacer.claim(endpoint_key(url), 10.0) - now for url in ("http://a/v1", "http://b/v1", "http://a/v1/")]
    pacer.close()
    assert waits[0] == pytest.approx(0, abs=0.5) and waits[1] == pytest.approx(0, abs=0.5)  # first claims: now
    assert waits[2] == pytest.approx(10.0, abs=0.5)  # a again (the trailing slash is the same endpoint)
    assert endpoint_key("http://a/v1/") == endpoint_key("http://a/v1")


def _catalog(base_url: str, models: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": models,
            "base_url": base_url,
            "model_id": models,
            "api_key_env": None,
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 2.0,
            "max_concurrency": 8,
            "requests_per_minute": 600,  # one request every 0.1 s, per endpoint
            "active": True,
        },
        schema_overrides={"api_key_env": pl.String},
    )


@pytest.mark.parametrize("shared", [True, False])
def test_two_runs_on_one_endpoint_keep_its_requests_per_minute_only_with_a_shared_pacer(
    tmp_path, mmlu_like_dir, shared
):
    """Two runs at once, each asking another model of one base_url (one provider, many models), each entry at
    600/min: with the shared pacer the endpoint sees 600/min in all, so the runs take about twice as long as one."""
    with wh.connect(tmp_path / "w.duckdb") as con:
        import_mmlu_pro(con, mmlu_like_dir, seed=0)
        wh.upsert_llms(con, _catalog("http://127.0.0.1:9/v1", ["cheap", "math-pro"]))
        pairs = wh.pending_pairs(con, ["cheap", "math-pro"], ["validation"])
    with ReplayServer(mmlu_like_dir) as server:
        llms = _catalog(server.base_url, ["cheap", "math-pro"])
        seconds: dict[str, float] = {}

        def run(model: str) -> None:
            pacer = SharedPacer(tmp_path / "pace.sqlite") if shared else LocalPacer()
            started = time.perf_counter()
            run_collection(
                StagingSink(tmp_path / "staging", f"run-{model}"),
                pairs.filter(pl.col("model") == model),
                llms,
                policy=RetryPolicy(max_attempts=2, timeout_s=5.0),
                progress=False,
                pacer=pacer,
            )
            seconds[model] = time.perf_counter() - started

        threads = [threading.Thread(target=run, args=(m,)) for m in ("cheap", "math-pro")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    n = pairs.height  # both models' requests, one endpoint
    assert n >= 16
    one_run = pairs.filter(pl.col("model") == "cheap").height
    if shared:
        assert max(seconds.values()) >= (n - 1) * 0.1 - 0.05
    else:  # each run paced alone: the endpoint got twice its limit (what the shared pacer is for)
        assert max(seconds.values()) < (n - 1) * 0.1 - 0.05 and max(seconds.values()) >= (one_run - 1) * 0.1 - 0.05
