"""The collector against a real replay server on 127.0.0.1 and a real DuckDB file."""

from __future__ import annotations

import logging

import polars as pl
import pytest

import warehouse as wh
from profiling.collector import RetryPolicy, collect
from profiling.importers import import_mmlu_pro
from profiling.replay_server import FaultRates, ReplayConfig, ReplayServer

FAST = RetryPolicy(max_attempts=8, base_delay_s=0.001, max_delay_s=0.01, timeout_s=2.0)
MODELS = ["cheap", "math-pro", "last"]


def _catalog(base_url: str, api_key_env: str | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": MODELS,
            "base_url": base_url,
            "model_id": MODELS,
            "api_key_env": api_key_env,
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 2.0,
            "max_concurrency": 8,
            "active": True,
        },
        schema_overrides={"api_key_env": pl.String},
    )


@pytest.fixture
def con(tmp_path, mmlu_like_dir):
    with wh.connect(tmp_path / "w.duckdb") as con:
        import_mmlu_pro(con, mmlu_like_dir, seed=0)
        yield con


def _served_counts(server: ReplayServer) -> pl.DataFrame:
    return server.request_log.frame().group_by("model", "prompt_id").agg(pl.col("count").sum())


def _missing_for_last(con) -> set[str]:
    """Validation prompts the fixture's model "last" never answered (every 10th question)."""
    ids = wh.read_prompts(con, splits=["validation"])["prompt_id"]
    return {p for p in ids if int(p.split("/")[1]) % 10 == 0}


def test_collects_each_pair_once_and_a_rerun_asks_nothing(con, mmlu_like_dir):
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        lines: list[str] = []
        first = collect(con, policy=FAST, progress=False, batch_size=10, log_progress=lines.append)
        second = collect(con, policy=FAST, progress=False)
        served = _served_counts(server)
    n_val = wh.read_prompts(con, splits=["validation"]).height
    missing = _missing_for_last(con)
    assert first.requested == 3 * n_val and first.stored == 3 * n_val - len(missing)
    assert len(lines) >= 3 and lines[-1].startswith(f"collected {first.requested}/{first.requested} (")
    assert second.requested == len(missing) and second.stored == 0  # only the never-answered pairs again
    stored = wh.read_responses(con)
    assert stored.height == first.stored and not stored.select("model", "prompt_id").is_duplicated().any()
    assert (stored["prompt_tokens"] > 0).all() and (stored["cost_usd"] > 0).all()
    answered = served.join(stored.select("model", "prompt_id"), on=["model", "prompt_id"])
    assert answered.height == stored.height  # the request log names the warehouse's prompt ids
    assert (answered["count"] == 1).all()  # no pair stored was ever asked twice


def test_permanent_errors_are_recorded_not_retried_and_accumulate(con, mmlu_like_dir):
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        report = collect(con, models=["last"], policy=FAST, progress=False)
        collect(con, models=["last"], policy=FAST, progress=False)
    failures = wh.read_failures(con)
    assert set(failures["prompt_id"]) == _missing_for_last(con) and report.failed == len(failures)
    assert (failures["last_error_class"] == "HTTP 404").all() and (failures["attempts"] == 2).all()


def test_faults_of_every_kind_end_with_every_pair_stored_once(con, mmlu_like_dir):
    config = ReplayConfig(faults=FaultRates.spread(0.4), hang_seconds=5.0, seed=3, retry_after_seconds=0)
    policy = RetryPolicy(max_attempts=20, base_delay_s=0.001, max_delay_s=0.01, timeout_s=0.3)
    with ReplayServer(mmlu_like_dir, config) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        report = collect(con, models=["cheap", "math-pro"], policy=policy, progress=False)
        totals = server.request_log.totals()
    n_val = wh.read_prompts(con, splits=["validation"]).height
    assert report.stored == 2 * n_val and report.failed == 0
    assert wh.read_responses(con).height == 2 * n_val
    assert {"HTTP 429", "HTTP 500", "HTTP 503", "Timeout", "MalformedBody"} <= set(report.errors)
    assert totals.get("ok", 0) == 2 * n_val  # exactly one successful answer per pair


def test_exhausted_retries_are_recorded_and_reported(con, mmlu_like_dir):
    config = ReplayConfig(faults=FaultRates(unavailable=1.0), retry_after_seconds=0)
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, timeout_s=1.0)
    with ReplayServer(mmlu_like_dir, config) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        report = collect(con, models=["cheap"], policy=policy, progress=False)
    failures = wh.read_failures(con)
    assert not report.complete and report.stored == 0 and report.failed == failures.height > 0
    assert (failures["attempts"] == 3).all() and (failures["last_error_class"] == "HTTP 503").all()


def test_planted_api_key_never_reaches_the_database_or_logs(con, mmlu_like_dir, tmp_path, monkeypatch, caplog, capsys):
    planted = "sk-PLANTED-" + "7f3a9c" * 4
    monkeypatch.setenv("UNIROUTE_TEST_KEY", planted)
    caplog.set_level(logging.DEBUG)
    config = ReplayConfig(faults=FaultRates.spread(0.3), hang_seconds=2.0, seed=1, retry_after_seconds=0)
    with ReplayServer(mmlu_like_dir, config) as server:
        wh.upsert_llms(con, _catalog(server.base_url, api_key_env="UNIROUTE_TEST_KEY"))
        report = collect(con, policy=RetryPolicy(max_attempts=4, base_delay_s=0.001, timeout_s=0.3))
    assert report.stored > 0
    con.execute("CHECKPOINT").fetchall()
    assert planted.encode() not in (tmp_path / "w.duckdb").read_bytes()
    out = capsys.readouterr()
    assert planted not in caplog.text + out.out + out.err


def test_unknown_model_is_named(con):
    with pytest.raises(ValueError, match="model='nope'"):
        collect(con, models=["nope"], progress=False)


def test_a_killed_collector_resumes_without_asking_stored_pairs_again(con, mmlu_like_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "w.duckdb"
    with ReplayServer(mmlu_like_dir, ReplayConfig(latency_ms=30)) as server:
        wh.upsert_llms(con, _catalog(server.base_url).with_columns(max_concurrency=pl.lit(2)))
        con.close()  # the collector process needs the file's write lock
        cmd = [
            sys.executable,
            "-m",
            "serving.cli",
            "collect",
            "--warehouse",
            str(path),
            "--batch-size",
            "4",
            "--quiet",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.request_log.totals().get("ok", 0) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with wh.connect(path) as again:
            before = wh.read_responses(again).select("model", "prompt_id")
            collect(again, policy=FAST, progress=False)
            after = wh.read_responses(again)
        served = _served_counts(server)
    assert 0 < before.height < after.height
    assert not after.select("model", "prompt_id").is_duplicated().any()
    asked_before = before.join(served, on=["model", "prompt_id"])
    assert asked_before.height == before.height and (asked_before["count"] == 1).all()


def test_requests_per_minute_spaces_request_starts(con, mmlu_like_dir):
    with ReplayServer(mmlu_like_dir) as server:
        paced = (
            _catalog(server.base_url)
            .filter(pl.col("name") == "cheap")
            .with_columns(
                requests_per_minute=pl.lit(600)  # one request every 0.1 s
            )
        )
        wh.upsert_llms(con, paced)
        report = collect(con, models=["cheap"], policy=FAST, progress=False)
    assert report.stored == 12 and report.seconds >= 11 * 0.1  # a lower bound: pacing can only slow it down
