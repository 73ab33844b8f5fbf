"""The decision log: nothing lost or doubled across threads, never blocking, atomic files, flushed on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.decisions import (
    SCHEMA,
    DecisionLog,
    decision_files,
    flush_on_sigterm,
    learning_fields,
    read_decisions,
)
from serving.feedback import read_feedback
from serving.metrics import GatewayMetrics

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def decision(request_id: str, **extra) -> dict:
    return {
        "request_id": request_id,
        "at": datetime.now(UTC),
        "key_id": "k1",
        "prompt_hash": "h" + request_id,
        "router_version": "3",
        "model_requested": "uniroute",
        "chosen_llm": "cheap",
        "cost_weight": 0.5,
        "budget_kind": "max_cost_per_query",
        "budget_value": 0.01,
        "candidates": ["cheap", "math-pro"],
        "predicted_error": {"cheap": 0.3, "math-pro": 0.1},
        "predicted_cost": {"cheap": 0.001, "math-pro": 0.01},
        "attempts": [{"llm": "cheap", "try_number": 1, "status": 200, "error": None, "seconds": 0.2}],
        "status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "realised_cost_usd": 0.0009,
        "latency_ms": 210.0,
        "stream": False,
        **extra,
    }


def raw_rows(directory: Path) -> pl.DataFrame:
    """Every row of every finished file, duplicates kept."""
    return pl.concat([pl.read_parquet(f) for f in decision_files(directory)])


def test_threads_lose_and_double_nothing_while_a_reader_watches(tmp_path):
    log = DecisionLog(tmp_path, batch_size=8, flush_interval_s=0.01)
    reads, failures, stop = [], [], threading.Event()

    def reader():  # a reader listing the directory while files are written never sees half a file
        while not stop.is_set():
            try:
                reads.append(read_decisions(tmp_path).height)
            except Exception as exc:  # any failure to read is the bug
                failures.append(exc)

    def writer(t: int):
        for i in range(125):
            assert log.record(decision(f"t{t}-{i}"))
            if i % 25 == 0:
                time.sleep(0.005)

    watcher = threading.Thread(target=reader)
    watcher.start()
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    stop.set()
    watcher.join()

    rows = raw_rows(tmp_path)
    assert rows.height == 1000 and rows["request_id"].n_unique() == 1000
    assert set(rows["request_id"]) == {f"t{t}-{i}" for t in range(8) for i in range(125)}
    assert (log.dropped, log.written, log.depth) == (0, 1000, 0)
    assert not failures and max(reads) <= 1000
    assert len(decision_files(tmp_path)) >= 1000 // 8
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    names = [f.name for f in decision_files(tmp_path)]
    assert len(set(names)) == len(names) and all(f"-{os.getpid()}-" in n for n in names)


def test_rows_keep_the_schema_and_nothing_but_it(tmp_path):
    with DecisionLog(tmp_path, flush_interval_s=0.01) as log:
        log.record(decision("a", prompt="what is my secret?", api_key="sk-live-123"))
        log.record({"request_id": "b", "status": 502, "at": "2026-03-01T12:00:00+02:00"})
    frame = read_decisions(tmp_path).sort("request_id")
    assert frame.schema == pl.Schema(SCHEMA)
    assert "prompt" not in frame.columns and "api_key" not in frame.columns
    a, b = frame.row(0, named=True), frame.row(1, named=True)
    assert json.loads(a["predicted_error"]) == {"cheap": 0.3, "math-pro": 0.1}
    assert json.loads(a["attempts"])[0]["llm"] == "cheap" and a["candidates"] == ["cheap", "math-pro"]
    assert b["at"] == datetime(2026, 3, 1, 10, tzinfo=UTC) and b["chosen_llm"] is None and b["status"] == 502
    raw = b"".join(f.read_bytes() for f in decision_files(tmp_path))
    assert b"sk-live-123" not in raw and b"secret" not in raw


def test_a_file_of_an_older_gateway_reads_with_the_new_columns_null(tmp_path):
    new = ("embedder_id", "cluster_weights", "ranked_llms", "ranked_predicted_error", "ranked_predicted_cost")
    with DecisionLog(tmp_path, flush_interval_s=0.01) as log:
        log.record(decision("new", **learning_fields(RANKED)))
    old = pl.DataFrame([decision("old")]).with_columns(
        pl.col(c).map_elements(json.dumps, return_dtype=pl.String) for c in ("predicted_error", "predicted_cost")
    )
    old.drop("attempts").write_parquet(tmp_path / "decisions-older-gateway-000000.parquet")  # before the new columns
    frame = read_decisions(tmp_path).sort("request_id")
    assert frame.schema == pl.Schema(SCHEMA) and frame["request_id"].to_list() == ["new", "old"]
    fresh, older = frame.row(0, named=True), frame.row(1, named=True)
    assert all(older[c] is None for c in (*new, "attempts")) and older["chosen_llm"] == "cheap"
    assert fresh["cluster_weights"] == [0.7, 0.2, 0.1] and fresh["embedder_id"] == "mini-d384"
    assert fresh["ranked_llms"] == ["math-pro", "generalist", "cheap"]
    assert fresh["ranked_predicted_error"] == [0.1, 0.2, 0.3] and fresh["ranked_predicted_cost"] == [0.01, 0.005, 0.001]


#: A ranking as ``ServableRouter.rank`` gives it (four candidates: the record keeps the first three).
RANKED = {
    "order": ["math-pro", "generalist", "cheap", "tiny"],
    "cost_weight": 0.0,
    "predicted_error": {"cheap": 0.3, "math-pro": 0.1, "generalist": 0.2, "tiny": 0.6},
    "cost": {"cheap": 0.001, "math-pro": 0.01, "generalist": 0.005, "tiny": 0.0001},
    "cluster_weights": [0.7, 0.2, 0.1],
    "embedder_id": "mini-d384",
}


def test_learning_fields_keep_the_first_three_of_the_ranking_and_nothing_without_one():
    fields = learning_fields(RANKED)
    assert fields["ranked_llms"] == ["math-pro", "generalist", "cheap"]
    assert fields["ranked_predicted_error"] == [0.1, 0.2, 0.3]
    assert set(learning_fields(None)) == set(fields) and all(v is None for v in learning_fields(None).values())


def test_invalid_records_are_dropped_alone(tmp_path):
    with DecisionLog(tmp_path, flush_interval_s=0.01) as log:
        log.record(decision("ok"))
        log.record(decision("bad", budget_kind="max_latency"))
        log.record({"status": 200})  # no request id
    assert read_decisions(tmp_path)["request_id"].to_list() == ["ok"]
    assert (log.dropped, log.written) == (2, 1)


class StuckLog(DecisionLog):
    """A log whose disk hangs until its ``release`` is set."""

    def __init__(self, *args, **kwargs):
        self.release = threading.Event()
        super().__init__(*args, **kwargs)

    def _write(self, batch):
        self.release.wait(10)
        super()._write(batch)


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    log = StuckLog(tmp_path, batch_size=1, flush_interval_s=0.01, max_queue=10)
    started = time.perf_counter()
    accepted = sum(log.record(decision(f"r{i}")) for i in range(100))
    assert time.perf_counter() - started < 1.0  # a hung disk never holds a request
    assert accepted + log.dropped == 100 and 10 <= accepted <= 12 and log.depth <= 10
    log.release.set()
    log.close()
    assert read_decisions(tmp_path).height == accepted and log.written == accepted
    assert not log.record(decision("late")) and log.dropped == 100 - accepted + 1  # closed: dropped, counted


def test_a_budget_less_record_says_none_and_the_tag_names_the_files(tmp_path):
    with DecisionLog(tmp_path, process_tag="gw/1", flush_interval_s=0.01) as log:
        log.record(decision("x", budget_kind=None, budget_value=None))
    assert read_decisions(tmp_path)["budget_kind"].to_list() == ["none"]
    assert [f.name.startswith("decisions-gw_1-") for f in decision_files(tmp_path)] == [True]


def test_metrics_hear_the_queue_and_the_drops_from_the_writer(tmp_path):
    metrics = GatewayMetrics()
    log = StuckLog(tmp_path, batch_size=1, flush_interval_s=0.01, max_queue=5, metrics=metrics)
    accepted = sum(log.record(decision(f"m{i}")) for i in range(20))
    log.release.set()
    log.close()
    got = {s.name: s.value for f in text_string_to_metric_families(metrics.render()[0].decode()) for s in f.samples}
    assert got["uniroute_decision_log_dropped_total"] == 20 - accepted > 0
    assert got["uniroute_decision_log_queue_depth"] == 0


# A process that records decisions and ratings, then is sent SIGTERM: flush_on_sigterm writes everything, then it
# dies of SIGTERM.
SCRIPT = """
import sys, time
from serving.decisions import DecisionLog, flush_on_sigterm
from serving.feedback import FeedbackLog, feedback_record, parse_feedback

log = DecisionLog(sys.argv[1], batch_size=10_000, flush_interval_s=3600)  # nothing written before close()
ratings = FeedbackLog(sys.argv[1] + "-feedback", batch_size=10_000, flush_interval_s=3600)
flush_on_sigterm(log, ratings)
for i in range(500):
    log.record({"request_id": f"s{i}", "status": 200, "chosen_llm": "cheap"})
    ratings.record(feedback_record(parse_feedback({"request_id": f"s{i}", "score": 1})[0], "k"))
print("recorded", log.written + ratings.written, flush=True)
while True:
    time.sleep(0.05)
"""

# The gateway's way: uvicorn handles SIGTERM with a graceful shutdown, which runs the lifespan's exit.
UVICORN_SCRIPT = """
import contextlib, sys
import uvicorn
from starlette.applications import Starlette
from serving.decisions import DecisionLog
from serving.feedback import FeedbackLog, feedback_record, parse_feedback

log = DecisionLog(sys.argv[1], batch_size=10_000, flush_interval_s=3600)
ratings = FeedbackLog(sys.argv[1] + "-feedback", batch_size=10_000, flush_interval_s=3600)

@contextlib.asynccontextmanager
async def lifespan(app):
    for i in range(500):
        log.record({"request_id": f"s{i}", "status": 200, "chosen_llm": "cheap"})
        ratings.record(feedback_record(parse_feedback({"request_id": f"s{i}", "score": 1})[0], "k"))
    print("recorded", log.written + ratings.written, flush=True)
    try:
        yield
    finally:
        log.close()
        ratings.close()

uvicorn.run(Starlette(lifespan=lifespan), host="127.0.0.1", port=0, log_level="warning")
"""


@pytest.mark.parametrize(
    ("source", "returncode"), [(SCRIPT, -signal.SIGTERM), (UVICORN_SCRIPT, -signal.SIGTERM)], ids=["handler", "uvicorn"]
)
def test_sigterm_leaves_every_decision_and_rating_on_disk(tmp_path, source, returncode):
    script = tmp_path / "gateway_like.py"
    script.write_text(textwrap.dedent(source))
    out = tmp_path / "decisions"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "recorded 0"  # all still queued
        assert decision_files(out) == []
        time.sleep(0.2)  # uvicorn: past the lifespan's start, serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == returncode  # killed by SIGTERM, as without the handler
    finally:
        proc.kill()
    frame = read_decisions(out)
    assert frame.height == 500 and set(frame["request_id"]) == {f"s{i}" for i in range(500)}
    assert raw_rows(out).height == 500
    rated = read_feedback(tmp_path / "decisions-feedback")
    assert rated.height == 500 and set(rated["request_id"]) == set(frame["request_id"])


def test_flush_on_sigterm_hands_on_to_the_handler_before_it(tmp_path):
    called = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: called.append(signum))
    try:
        log = DecisionLog(tmp_path, batch_size=10_000, flush_interval_s=3600)
        flush_on_sigterm(log)
        log.record(decision("t"))
        signal.raise_signal(signal.SIGTERM)
        assert called == [signal.SIGTERM] and read_decisions(tmp_path)["request_id"].to_list() == ["t"]
    finally:
        signal.signal(signal.SIGTERM, previous)
