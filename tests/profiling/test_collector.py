"""The collector against a real replay server on 127.0.0.1 and a real DuckDB file."""

from __future__ import annotations

import logging
import math
import random
import subprocess
import sys
import time
from collections import Counter

import polars as pl
import pytest

import warehouse as wh
from profiling.collector import RetryPolicy
from profiling.completion import complete_many
from profiling.staging import collect, staged_pairs
from replay import FaultRates, ReplayConfig, ReplayServer
from tests.serving.hostile_upstream import HostileUpstream

FAST = RetryPolicy(max_attempts=8, base_delay_s=0.001, max_delay_s=0.01, timeout_s=2.0)
MODELS = ["cheap", "math-pro", "last"]


def _catalog(base_url: str, api_key_env: str | None = None, models: list[str] = MODELS) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": models,
            "base_url": base_url,
            "model_id": models,
            "api_key_env": api_key_env,
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 2.0,
            "max_concurrency": 8,
            "active": True,
        },
        schema_overrides={"api_key_env": pl.String},
    )


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


#: Models of the fixture that answer every prompt (so every pair asked can be stored).
COMPLETE = ["bio-pro", "cheap", "generalist", "history-pro", "math-pro"]
ALL_SPLITS = ["train", "validation", "test"]


def _stored_pairs(path) -> set[tuple[str, str]]:
    """Pairs whose answer is kept: in the warehouse, or staged beside it (``uniroute collect`` merges those next)."""
    with wh.connect(path) as con:
        stored = wh.read_responses(con).select("model", "prompt_id")
    assert not stored.is_duplicated().any()
    staged = staged_pairs(wh.default_staging_path(path)).select("model", "prompt_id")
    return set(stored.iter_rows()) | set(staged.iter_rows())


def _ok_counts(server: ReplayServer) -> Counter:
    """Answers served (billed, for a real endpoint) per (model, prompt_id); logged when a request arrives, so those
    in flight at a kill count too."""
    return Counter(
        {(r["model"], r["prompt_id"]): r["count"] for r in server.request_log.rows() if r["outcome"] == "ok"}
    )


def test_a_killed_collector_loses_at_most_two_seconds_of_answers_and_a_rerun_asks_only_the_rest(
    con, mmlu_like_dir, tmp_path
):
    """SIGKILL ``uniroute collect`` (defaults: 512 answers or 2 s per staged file) at seeded points 3-4 s into
    answering (a batch of 512 would not be full: the old behaviour stored nothing), then re-run to the end: it merges
    what the killed runs staged and asks only the rest."""
    path, flush_s = tmp_path / "w.duckdb", 2.0  # the collector's default flush interval
    slack_s = 0.5  # for the write in progress and a timer firing late on 2 busy cores
    latency_s, per_model = 0.2, 2  # 5 models x 2 / 0.2 s: about 50 answers/s, so a kill finds ~100 answers in 2 s
    in_flight = len(COMPLETE) * per_model  # logged as paid when they arrived; never received by the killed run
    rng = random.Random(14)
    kill_after_s = [rng.uniform(3.0, 4.0) for _ in range(2)]
    command = [sys.executable, "-m", "pipelines.cli", "collect", "--warehouse", str(path), "--quiet"]
    command += ["--models", *COMPLETE, "--splits", *ALL_SPLITS]
    with ReplayServer(mmlu_like_dir, ReplayConfig(latency_ms=latency_s * 1000)) as server:
        catalog = _catalog(server.base_url, models=COMPLETE)
        wh.upsert_llms(con, catalog.with_columns(max_concurrency=pl.lit(per_model)))
        n_pairs = wh.pending_pairs(con, COMPLETE, ALL_SPLITS).height
        con.close()  # the collector process needs the file's write lock
        lost_total = 0
        for seconds in kill_after_s:
            stored_before, paid_before = _stored_pairs(path), _ok_counts(server)
            with open(tmp_path / "collect.log", "w") as output:
                proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
            try:
                deadline, first_paid_at = time.monotonic() + 60, None
                while first_paid_at is None or time.monotonic() < first_paid_at + seconds:
                    assert proc.poll() is None, (tmp_path / "collect.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "the collector asked nothing within 60 s"
                    if first_paid_at is None and sum(_ok_counts(server).values()) > sum(paid_before.values()):
                        first_paid_at = time.monotonic()
                    time.sleep(0.02)
            finally:
                proc.kill()
                proc.wait()
            killed_at = time.monotonic()
            paid = _ok_counts(server) - paid_before  # the process is dead: nothing more arrives
            stored = _stored_pairs(path)
            lost = set(paid) - stored
            rate = sum(paid.values()) / (killed_at - first_paid_at)
            allowed = math.ceil(rate * (flush_s + slack_s)) + in_flight
            assert len(stored) > len(stored_before), "nothing was stored within the run's first seconds"
            assert len(lost) <= allowed, f"{len(lost)} answers lost; {rate:.0f}/s allows {allowed}"
            assert not set(paid) & stored_before  # no pair stored before this run was asked again
            lost_total += len(lost)

        stored_before, paid_before = _stored_pairs(path), _ok_counts(server)
        with wh.connect(path) as again:
            wh.upsert_llms(again, catalog.with_columns(max_concurrency=pl.lit(16)))  # the rest, quickly
            in_warehouse = wh.read_responses(again).height
        finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
        paid = _ok_counts(server)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    asked = n_pairs - len(stored_before)
    assert f": {asked}/{asked} stored" in finished.stdout  # and what the killed runs staged is merged now too
    assert f"; {n_pairs - in_warehouse} answers merged into the warehouse" in finished.stdout
    with wh.connect(path) as con:  # the killed runs' staged answers merged too: every pair in the warehouse, once
        stored = wh.read_responses(con).select("model", "prompt_id")
    assert stored.height == n_pairs and not stored.is_duplicated().any()
    assert not set(paid - paid_before) & stored_before  # asked only what was neither stored nor staged
    assert sum(paid.values()) == n_pairs + lost_total  # an answer paid twice only where the first was lost


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


def test_a_redirect_is_a_failure_not_retried_and_the_prompt_never_reaches_the_other_origin():
    """The collector used to follow a redirect, sending the prompt (and its answer's bill) to another origin."""
    llm = {"name": "x", "base_url": "", "model_id": "x", "api_key_env": None, "usd_per_mtok_in": 1.0}
    llm |= {"usd_per_mtok_out": 1.0, "max_concurrency": 2, "requests_per_minute": None}
    with HostileUpstream() as other, HostileUpstream(f"redirect:307:{other.base_url}") as hostile:
        answers = complete_many(
            llm | {"base_url": hostile.base_url}, [{"messages": [{"role": "user", "content": "hi"}]}]
        )
        assert other.requests == [] and len(hostile.requests) == 1
    assert answers == [None]
