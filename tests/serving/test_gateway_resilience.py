"""The gateway in front of flaky and dead endpoints: retries, fallbacks before the first byte (plain and streamed),
the circuit breaker, per-LLM timeouts from the catalog, and a decision log that holds every attempt after
SIGTERM; ``--workers 2`` serves the same champion from two processes with one ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import polars as pl
import requests
from prometheus_client.parser import text_string_to_metric_families

from profiling.rendering import render_mmlu_pro
from replay import FaultRates, ReplayConfig, ReplayServer
from serving.decisions import read_decisions
from serving.processes import free_port

from .conftest import gateway_process, write_gateway_catalog


def _prompts(data_dir, n: int, category: str | None = None) -> list[str]:
    questions = pl.read_parquet(data_dir / "questions.parquet")
    questions = questions.filter(pl.col("category") == category).head(n) if category else questions.head(n)
    return [render_mmlu_pro(q, o, c) for q, o, c in questions.select("question", "options", "category").iter_rows()]


async def _send(url: str, bodies: list[dict], concurrency: int = 8) -> list[tuple[int, str, str]]:
    """(status, X-UniRoute-LLM, body text) per request, ``concurrency`` in flight."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, body: dict) -> tuple[int, str, str]:
        async with semaphore, session.post(f"{url}/v1/chat/completions", json=body) as response:
            return response.status, response.headers.get("X-UniRoute-LLM", ""), await response.text()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        return await asyncio.gather(*(one(session, body) for body in bodies))


def _body(prompt: str, **extra) -> dict:
    return {"model": "uniroute", "messages": [{"role": "user", "content": prompt}], "cost_weight": 0.0, **extra}


FAULTS = FaultRates(rate_limited=0.06, server_error=0.06, unavailable=0.06, hang=0.06, truncated=0.06)


def test_injected_faults_of_every_kind_never_reach_the_client(registry_uri, tmp_path, mmlu_like_dir, prices):
    config = ReplayConfig(faults=FAULTS, seed=3, hang_seconds=20, retry_after_seconds=0)
    timeouts = "timeout_first_byte_s: 0.5, timeout_total_s: 5"
    with ReplayServer(mmlu_like_dir, config) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices, dict.fromkeys(prices, timeouts))
        with gateway_process(tmp_path, catalog, registry_uri, "--retries", "1") as url:
            bodies = [_body(p) for p in _prompts(mmlu_like_dir, 60)]
            answers = asyncio.run(_send(url, bodies))
            streamed = asyncio.run(_send(url, [{**b, "stream": True} for b in bodies[:20]]))
        outcomes = replay.request_log.totals()
    assert [status for status, _, _ in answers + streamed] == [200] * 80, [a for a in answers if a[0] != 200]
    assert all(json.loads(text)["choices"][0]["message"]["content"] for _, _, text in answers)
    assert sum(n for kind, n in outcomes.items() if kind != "ok") >= 10  # faults were injected and survived
    decisions = read_decisions(tmp_path / "decisions")  # after SIGTERM: every request's record is on disk
    assert decisions.height == 80 and set(decisions["status"]) == {200}
    attempts = [a for text in decisions["attempts"] for a in json.loads(text) if a["error"] != "circuit_open"]
    assert len(attempts) == sum(outcomes.values())  # every try the endpoint saw is in the log, and no other
    failed = [a for a in attempts if a["error"]]
    assert {a["error"] for a in failed} >= {"HTTP 429", "HTTP 500", "HTTP 503", "Timeout(first_byte)", "InvalidJSON"}
    assert len(failed) == sum(n for kind, n in outcomes.items() if kind != "ok")  # a cut stream's too


def test_a_dead_llm_falls_back_and_its_circuit_opens(registry_uri, tmp_path, mmlu_like_dir, prices):
    dead = f"base_url: 'http://127.0.0.1:{free_port()}/v1'"  # nothing listens there
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices, {"math-pro": dead, "generalist": dead})
        with gateway_process(tmp_path, catalog, registry_uri, "--retries", "0") as url:
            math = _prompts(mmlu_like_dir, 12, "math")
            answers = asyncio.run(_send(url, [_body(p) for p in math], concurrency=1))
            streamed = asyncio.run(_send(url, [_body(math[0], stream=True)], concurrency=1))
    assert {(status, llm) for status, llm, _ in answers + streamed} == {(200, "cheap")}
    assert "data: [DONE]" in streamed[0][2] and streamed[0][2].startswith(": uniroute ")
    decisions = read_decisions(tmp_path / "decisions").sort("at")
    tries = [json.loads(text) for text in decisions["attempts"]]
    assert tries[0][0]["llm"] in {"math-pro", "generalist"} and tries[0][0]["error"] == "ClientConnectorError"
    assert tries[0][-1] == {**tries[0][-1], "llm": "cheap", "error": None}
    later = [a["error"] for a in tries[-1] if a["llm"] != "cheap"]
    assert later and set(later) == {"circuit_open"}  # cooled down: not asked again, no connection tried


def test_two_workers_serve_the_champion_with_one_metrics_page(registry_uri, tmp_path, mmlu_like_dir, prices):
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        metrics_dir = tmp_path / "prometheus"
        env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        with gateway_process(tmp_path, catalog, registry_uri, "--workers", "2", env=env) as url:
            deadline = time.monotonic() + 120  # the second worker may still be loading its router
            while len({p.name.split("_")[-1] for p in metrics_dir.glob("*.db")}) < 2 and time.monotonic() < deadline:
                requests.get(f"{url}/ready", timeout=10)
                time.sleep(0.5)
            answers = asyncio.run(_send(url, [_body(p) for p in _prompts(mmlu_like_dir, 40)]))
            page = requests.get(f"{url}/metrics", timeout=10).text
    assert {status for status, _, _ in answers} == {200}
    samples = [s for f in text_string_to_metric_families(page) for s in f.samples]
    served = sum(s.value for s in samples if s.name == "uniroute_requests_total" and s.labels["status"] == "200")
    assert served == 40  # both workers' counts, whichever answered the scrape
    files = list(tmp_path.glob("decisions/decisions-*.parquet"))
    assert len({f.name.rsplit("-", 2)[0] for f in files}) >= 1 and read_decisions(tmp_path / "decisions").height == 40


def test_an_upstream_429_everywhere_reaches_the_client_with_retry_after(registry_uri, tmp_path, mmlu_like_dir, prices):
    config = ReplayConfig(faults=FaultRates(rate_limited=1.0), retry_after_seconds=7)
    with ReplayServer(mmlu_like_dir, config) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        with gateway_process(tmp_path, catalog, registry_uri, "--retries", "0", "--fallbacks", "1") as url:
            answer = requests.post(f"{url}/v1/chat/completions", json=_body(_prompts(mmlu_like_dir, 1)[0]), timeout=60)
        assert replay.request_log.totals() == {"rate_limited": 2}  # the choice and one fallback, no more
    error = answer.json()["error"]
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "7"
    assert error["code"] == "rate_limit_exceeded" and "injected" not in error["message"]  # not the upstream's body


def test_an_answer_without_usable_token_counts_is_charged_the_routers_expected_cost(
    registry_uri, tmp_path, mmlu_like_dir, prices
):
    secret = "eve-secret-0123456789abcdef"
    headers = {"Authorization": f"Bearer {secret}"}
    with ReplayServer(mmlu_like_dir, ReplayConfig(faults=FaultRates(malformed_usage=1.0))) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        env = {"UNIROUTE_GATEWAY_KEYS": f"eve:{secret}:0.05:"}
        with gateway_process(tmp_path, catalog, registry_uri, env=env) as url:
            body = {"model": "cheap", "messages": [{"role": "user", "content": _prompts(mmlu_like_dir, 1)[0]}]}
            first = requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
            second = requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert first.status_code == 200 and first.json()["uniroute"]["cost_usd"] == prices["cheap"]  # the router's cost
    assert second.status_code == 429 and second.json()["error"]["code"] == "insufficient_quota"
    assert read_decisions(tmp_path / "decisions")["realised_cost_usd"].to_list() == [prices["cheap"]]
