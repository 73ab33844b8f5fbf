"""The gateway's /metrics: the values observed, added up over worker processes; and the access-log line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from serving.metrics import GatewayMetrics, access_log_line, clear_multiprocess_dir

from .conftest import samples

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def observe_some(metrics: GatewayMetrics) -> None:
    metrics.observe_request("uniroute", "k1", 200, 0.5)
    metrics.observe_request("uniroute", "k1", 200, 1.5)
    metrics.observe_request("uniroute", "k2", 429, 0.001)
    metrics.observe_routing(0.004)
    metrics.observe_upstream("cheap", 0.3, None)
    metrics.observe_upstream("math-pro", 7.0, "timeout")
    metrics.observe_choice("math-pro", fallback=False)
    metrics.observe_choice("cheap", fallback=True)
    metrics.observe_cost("cheap", "k1", 0.25)
    metrics.observe_cost("cheap", "k1", 0.5)


def test_values_observed_are_rendered():
    metrics = GatewayMetrics()
    observe_some(metrics)
    metrics.set_queue(5, 3)
    metrics.set_queue(2, 7)  # dropped is the log's running total: the counter reaches it, never double-counts
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    got = samples(body)
    assert got["uniroute_requests_total", (("key_id", "k1"), ("model", "uniroute"), ("status", "200"))] == 2
    assert got["uniroute_requests_total", (("key_id", "k2"), ("model", "uniroute"), ("status", "429"))] == 1
    assert got["uniroute_request_duration_seconds_count", (("status_class", "2xx"),)] == 2
    assert got["uniroute_routing_duration_seconds_count", ()] == 1
    assert got["uniroute_routing_duration_seconds_bucket", (("le", "0.005"),)] == 1
    assert got["uniroute_routing_duration_seconds_bucket", (("le", "0.0025"),)] == 0
    assert got["uniroute_upstream_duration_seconds_count", (("llm", "math-pro"),)] == 1
    assert got["uniroute_upstream_duration_seconds_sum", (("llm", "cheap"),)] == 0.3
    assert got["uniroute_upstream_errors_total", (("kind", "timeout"), ("llm", "math-pro"))] == 1
    assert ("uniroute_upstream_errors_total", (("kind", "timeout"), ("llm", "cheap"))) not in got
    assert got["uniroute_choices_total", (("llm", "math-pro"),)] == 1
    assert got["uniroute_fallbacks_total", (("llm", "cheap"),)] == 1
    assert ("uniroute_choices_total", (("llm", "cheap"),)) not in got
    assert got["uniroute_cost_usd_total", (("key_id", "k1"), ("llm", "cheap"))] == 0.75
    assert got["uniroute_decision_log_queue_depth", ()] == 2
    assert got["uniroute_decision_log_dropped_total", ()] == 7


def test_every_record_log_reports_under_its_own_label():
    metrics = GatewayMetrics()
    metrics.set_queue(5, 3)  # the decision log's (the default)
    metrics.set_queue(4, 2, log="feedback")
    metrics.set_queue(1, 6, log="feedback")  # each log's own running total: its counter reaches it
    metrics.set_queue(1, 6, log="feedback")  # told again, nothing new dropped: nothing added
    metrics.set_queue(0, 0, log="traffic")
    got = samples(metrics.render()[0])
    assert got["uniroute_record_log_queue_depth", (("log", "feedback"),)] == 1
    assert got["uniroute_record_log_dropped_total", (("log", "feedback"),)] == 6
    assert got["uniroute_record_log_queue_depth", (("log", "traffic"),)] == 0
    assert got["uniroute_record_log_dropped_total", (("log", "traffic"),)] == 0  # shown before any drop
    assert got["uniroute_record_log_queue_depth", (("log", "decision"),)] == 5
    assert got["uniroute_record_log_dropped_total", (("log", "decision"),)] == 3
    assert got["uniroute_decision_log_queue_depth", ()] == 5  # the feedback log's values never reach these
    assert got["uniroute_decision_log_dropped_total", ()] == 3


def test_two_gateways_in_one_process_keep_their_own_values():
    first, second = GatewayMetrics(), GatewayMetrics()
    first.observe_choice("cheap", fallback=False)
    assert samples(first.render()[0])["uniroute_choices_total", (("llm", "cheap"),)] == 1
    assert ("uniroute_choices_total", (("llm", "cheap"),)) not in samples(second.render()[0])


def test_free_text_labels_are_cut():
    metrics = GatewayMetrics()
    metrics.observe_request("x" * 500, "k1", 200, 0.1)
    assert ("uniroute_requests_total", (("key_id", "k1"), ("model", "x" * 64), ("status", "200"))) in samples(
        metrics.render()[0]
    )


WORKER = """
import sys
from serving.metrics import GatewayMetrics

n, depth, dead = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "dead"
metrics = GatewayMetrics()
for _ in range(n):
    metrics.observe_request("uniroute", "k1", 200, 0.2)
    metrics.observe_cost("cheap", "k1", 0.5)
metrics.observe_choice("cheap", fallback=False)
metrics.set_queue(depth, 1)
metrics.set_queue(depth + 1, 2, log="feedback")
if dead:
    metrics.close()  # a worker shutting down: its queue depth no longer counts
"""

SCRAPE = """
import os, sys
from serving.metrics import GatewayMetrics  # imported before the variable is set: the CLI may do that

os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
metrics = GatewayMetrics()
metrics.observe_request("uniroute", "k1", 200, 0.2)  # its own values are written to the directory too
sys.stdout.buffer.write(metrics.render()[0])
"""


def test_multiprocess_mode_adds_up_every_worker(tmp_path):
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale")  # an earlier run's file: cleared at start
    assert clear_multiprocess_dir(directory) == directory and list(directory.iterdir()) == []
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker, scrape = tmp_path / "worker.py", tmp_path / "scrape.py"
    worker.write_text(textwrap.dedent(WORKER))
    scrape.write_text(textwrap.dedent(SCRAPE))
    for n, depth, dead in ((3, 4, "live"), (5, 6, "live"), (7, 100, "dead")):
        subprocess.run([sys.executable, str(worker), str(n), str(depth), dead], env=env, check=True, timeout=60)
    del env["PROMETHEUS_MULTIPROC_DIR"]
    body = subprocess.run(
        [sys.executable, str(scrape), str(directory)], env=env, check=True, timeout=60, capture_output=True
    ).stdout
    got = samples(body)
    assert got["uniroute_requests_total", (("key_id", "k1"), ("model", "uniroute"), ("status", "200"))] == 16
    assert got["uniroute_request_duration_seconds_count", (("status_class", "2xx"),)] == 16
    assert got["uniroute_cost_usd_total", (("key_id", "k1"), ("llm", "cheap"))] == 7.5
    assert got["uniroute_choices_total", (("llm", "cheap"),)] == 3
    assert got["uniroute_decision_log_dropped_total", ()] == 3
    assert got["uniroute_decision_log_queue_depth", ()] == 10  # the live workers' queues only
    assert got["uniroute_record_log_dropped_total", (("log", "decision"),)] == 3
    assert got["uniroute_record_log_queue_depth", (("log", "decision"),)] == 10
    assert got["uniroute_record_log_dropped_total", (("log", "feedback"),)] == 6
    assert got["uniroute_record_log_queue_depth", (("log", "feedback"),)] == 12  # (4 + 1) + (6 + 1)


def test_access_log_line_has_the_fields_and_never_the_prompt_or_key():
    at = datetime(2026, 5, 1, 14, 30, 0, 123000, tzinfo=timezone(timedelta(hours=2)))
    line = access_log_line(
        time=at,
        request_id="req-1",
        key_id="team a",
        method="POST",
        path="/v1/chat/completions?api_key=sk-secret",
        status=200,
        chosen_llm="cheap",
        tried=["generalist", "cheap"],  # the choice failed; its fallback answered
        attempts=2,
        latency_ms=212.345,
        realised_cost_usd=0.00042,
        prompt="tell me the launch codes",
        authorization="Bearer sk-secret",
    )
    assert line == (
        'at=2026-05-01T12:30:00.123Z request_id=req-1 key_id="team a" method=POST path=/v1/chat/completions '
        "status=200 llm=cheap tried=generalist,cheap attempts=2 latency_ms=212.3 cost_usd=0.00042000"
    )
    assert "\n" not in access_log_line(request_id="a\nb", status=500)
    now = access_log_line(request_id="r", status=401)
    assert now.startswith(f"at={datetime.now(UTC):%Y-%m-%dT%H}") and "llm=- " in now and now.endswith("cost_usd=-")
