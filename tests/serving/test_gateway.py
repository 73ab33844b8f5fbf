"""`uniroute serve` as a user runs it: a real gateway process on 127.0.0.1 in front of the replay endpoint,
routing with the registry's champion and swapping in a new champion without failing a request."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest
import requests

from profiling.rendering import render_mmlu_pro
from replay import ReplayServer

from .conftest import gateway_process, write_gateway_catalog


@pytest.fixture(scope="module")
def gateway(registry_uri, tmp_path_factory, mmlu_like_dir, prices):
    """(gateway URL, replay server) with the fixture's three LLMs in the catalog; one process for the module."""
    root = tmp_path_factory.mktemp("gateway")
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = root / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        with gateway_process(root, catalog, registry_uri, "--reload-interval", "0.5") as url:
            yield url, replay


def _prompt(data_dir, category: str) -> str:
    """A fixture question rendered as the LLMs are asked it (what the replay endpoint recognises)."""
    row = pl.read_parquet(data_dir / "questions.parquet").filter(pl.col("category") == category).row(0, named=True)
    return render_mmlu_pro(row["question"], row["options"], row["category"])


def _chat(url: str, prompt: str, **extra) -> requests.Response:
    body = {"model": "uniroute", "messages": [{"role": "user", "content": prompt}], **extra}
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_the_gateway_routes_forwards_and_names_the_llm(gateway, mmlu_like_dir, prices):
    url, replay = gateway
    math = _prompt(mmlu_like_dir, "math")
    asked_before = sum(replay.request_log.totals().values())
    answer = _chat(url, math, cost_weight=0.0)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert answer.headers["X-UniRoute-LLM"] == body["uniroute"]["llm"] in {"math-pro", "generalist"}
    assert body["uniroute"]["router_version"] == "1" and body["choices"][0]["message"]["content"]
    assert _chat(url, math, cost_weight=1e6).headers["X-UniRoute-LLM"] == "cheap"
    assert _chat(url, math, candidates=["generalist"]).headers["X-UniRoute-LLM"] == "generalist"
    assert _chat(url, math, max_cost_per_query=0.1).headers["X-UniRoute-LLM"] == "cheap"  # the cheapest point
    direct = {"model": "math-pro", "messages": [{"role": "user", "content": math}]}
    answer = requests.post(f"{url}/v1/chat/completions", json=direct, timeout=30)
    assert answer.status_code == 200 and answer.headers["X-UniRoute-LLM"] == "math-pro"
    assert sum(replay.request_log.totals().values()) - asked_before == 5  # each answer came from the endpoint

    too_little = _chat(url, math, max_cost_per_query=1e-3)
    assert too_little.status_code == 400 and "max_cost_per_query=0.001" in too_little.json()["error"]["message"]
    unknown = requests.post(
        f"{url}/v1/chat/completions", json={"model": "gpt-99", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert unknown.status_code == 404 and "gpt-99" in unknown.json()["error"]["message"]
    no_user = requests.post(f"{url}/v1/chat/completions", json={"model": "uniroute", "messages": []})
    assert no_user.status_code == 400 and no_user.json()["error"]["param"] == "messages"
    bad_candidate = _chat(url, math, candidates=["gpt-99"])
    assert bad_candidate.status_code == 400 and "gpt-99" in bad_candidate.json()["error"]["message"]
    assert requests.get(f"{url}/v1/models").json()["data"][0]["id"] == "uniroute"


def test_a_new_champion_is_swapped_in_without_a_failed_request(gateway, mmlu_like_dir, tmp_path, register_router):
    from serving import registry

    url, _ = gateway
    prompt = _prompt(mmlu_like_dir, "history")
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def keep_asking():
        while not stop.is_set():
            answer = _chat(url, prompt, cost_weight=0.0)
            seen.append((answer.status_code, answer.headers.get("X-UniRoute-Router-Version")))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        version = register_router(tmp_path, ["cheap", "generalist"])
        registry.promote("uniroute", version, better=True)
        deadline = time.monotonic() + 60
        while not any(v == version for _, v in seen[-5:]) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        asker.join(timeout=60)
    versions = [v for _, v in seen]
    assert {status for status, _ in seen} == {200}, seen  # no request failed during the swap
    swapped = versions.index(version)
    assert swapped > 0 and set(versions[:swapped]) == {"1"} and set(versions[swapped:]) == {version}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": ["uniroute"], "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "stream": "false"}, "stream"),
        ({"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "candidates": "cheap"}, "candidates"),
        ({"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "n": 4}, "n"),
        (
            {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_cost_per_query": 0.1},
            "max_cost_per_query",
        ),
    ],
)
def test_bad_requests_are_refused_before_anything_is_paid(gateway, body, param):
    url, replay = gateway
    asked = sum(replay.request_log.totals().values())
    answer = requests.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    infinite = requests.post(
        f"{url}/v1/chat/completions",
        data=b'{"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "cost_weight": Infinity}',
        timeout=30,
    )
    assert infinite.status_code == 400 and "Infinity" in infinite.json()["error"]["message"]
    for raw in (b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000):
        answer = requests.post(f"{url}/v1/chat/completions", data=raw, timeout=30)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "body"
    assert sum(replay.request_log.totals().values()) == asked  # no upstream was asked anything


def test_the_heap_loaded_at_start_is_frozen_and_a_replaced_router_can_still_be_collected():
    """Full collections skip what the gateway loaded (freeze_heap after each router load); the next load unfreezes
    first, so a replaced router held in a reference cycle is freed."""
    import gc
    import weakref

    from serving.loaded_router import freeze_heap

    class Router:
        pass

    old = Router()
    old.cycle = old  # only the collector frees it
    gone = weakref.ref(old)
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        del old
        gc.collect()
        assert gone() is not None  # frozen: a full collection does not look at it
        freeze_heap()  # the next router loaded
        assert gone() is None
    finally:
        gc.unfreeze()
