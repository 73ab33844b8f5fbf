"""serving.upstream against real replay servers on 127.0.0.1: retries, Retry-After, fallbacks, timeouts, the
circuit breaker, non-retryable errors, streaming and keys."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import tracemalloc

import pytest
from aiohttp import web

from openai_compat import realised_cost
from replay import FaultRates, ReplayConfig, ReplayServer
from serving.upstream import Timeouts, UpstreamResult, Upstreams
from tests.openai_compat.servers import serving

from .hostile_upstream import HostileUpstream

SECRET = "sk-test-0123456789abcdef"


def row(base_url: str, model_id: str = "math-pro", **extra: object) -> dict:
    return {
        "name": model_id,
        "base_url": base_url,
        "model_id": model_id,
        "api_key_env": None,
        "usd_per_mtok_in": 1.0,
        "usd_per_mtok_out": 1.0,
        **extra,
    }


def body(prompt: str, **extra: object) -> dict:
    return {"model": "uniroute", "messages": [{"role": "user", "content": prompt}], **extra}


def call(order: list[tuple[str, dict]], request: dict, stream: bool = False, **policy: object) -> UpstreamResult:
    """One call with a fresh Upstreams (a stream is read to its end; its bytes land in ``result.payload``)."""
    return asyncio.run(calls([(order, request, stream)], **policy))[0]


async def calls(requests: list[tuple[list, dict, bool]], pause_s: float = 0.0, **policy: object) -> list:
    """Several calls in turn through one Upstreams (one breaker state); streams are read to their end."""
    results = []
    async with Upstreams(**{"base_delay_s": 0.01, **policy}) as upstreams:
        for i, (order, request, stream) in enumerate(requests):
            if i and pause_s:
                await asyncio.sleep(pause_s)
            result = await upstreams.call(order, request, stream)
            if result.stream is not None:
                result.payload = {"sse": b"".join([chunk async for chunk in result.stream]).decode()}
            results.append((result, upstreams.available(order[0][0])) if policy.get("breaker_failures") else result)
    return results


def sse_data(text: str) -> list[str]:
    return [part.removeprefix("data: ") for part in text.split("\n\n") if part.startswith("data: ")]


def streamed_text(text: str) -> str:
    chunks = [json.loads(e) for e in sse_data(text) if e != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))


def summary(result: UpstreamResult) -> list[tuple[str, int | None, str | None]]:
    return [(a.llm, a.status, a.error) for a in result.attempts]


# ---- retries and fallbacks ----


def test_a_429_is_retried_after_its_retry_after_then_answers(mmlu_like_dir, prompts, recorded):
    # a seed whose first draw is a 429 (rate 0.5) and second an answer
    seed = next(s for s in range(1000) if (r := random.Random(s)).random() < 0.5 <= r.random())
    config = ReplayConfig(faults=FaultRates(rate_limited=0.5), seed=seed, retry_after_seconds=1)
    with ReplayServer(mmlu_like_dir, config) as server:
        started = time.perf_counter()
        result = call([("math-pro", row(server.base_url))], body(prompts[1]), max_delay_s=5.0)
        elapsed = time.perf_counter() - started
        assert server.request_log.totals() == {"rate_limited": 1, "ok": 1}
    assert summary(result) == [("math-pro", 429, "HTTP 429"), ("math-pro", 200, None)]
    assert result.attempts[0].retry_after_s == 1.0
    assert elapsed >= 1.0  # waited the Retry-After, not the 10 ms backoff
    assert (result.status, result.llm) == (200, "math-pro")
    assert result.payload["choices"][0]["message"]["content"] == recorded["math-pro", 1]
    assert result.usage == result.payload["usage"]


def test_a_retry_after_above_the_cap_moves_on_to_the_next_llm_at_once(mmlu_like_dir, prompts):
    limited = ReplayConfig(faults=FaultRates(rate_limited=1.0), retry_after_seconds=30)
    with ReplayServer(mmlu_like_dir, limited) as first, ReplayServer(mmlu_like_dir) as second:
        started = time.perf_counter()
        order = [("math-pro", row(first.base_url)), ("cheap", row(second.base_url, "cheap"))]
        result = call(order, body(prompts[2]), max_delay_s=2.0)
        assert time.perf_counter() - started < 1.5
        assert first.request_log.totals() == {"rate_limited": 1}
    assert summary(result) == [("math-pro", 429, "HTTP 429"), ("cheap", 200, None)]
    assert result.llm == "cheap"


def test_a_500_on_every_try_falls_back_to_the_next_llm(mmlu_like_dir, prompts, recorded):
    failing = ReplayConfig(faults=FaultRates(server_error=1.0))
    with ReplayServer(mmlu_like_dir, failing) as first, ReplayServer(mmlu_like_dir) as second:
        order = [("math-pro", row(first.base_url)), ("bio-pro", row(second.base_url, "bio-pro"))]
        result = call(order, body(prompts[3]), retries=2)
        assert first.request_log.totals() == {"server_error": 3}
        assert second.request_log.totals() == {"ok": 1}
    assert summary(result) == [("math-pro", 500, "HTTP 500")] * 3 + [("bio-pro", 200, None)]
    assert [a.try_number for a in result.attempts] == [1, 2, 3, 1]
    assert (result.status, result.llm) == (200, "bio-pro")
    assert result.payload["choices"][0]["message"]["content"] == recorded["bio-pro", 3]


def test_all_failing_is_a_502_whose_message_is_not_the_upstreams_body(mmlu_like_dir, prompts):
    with ReplayServer(mmlu_like_dir, ReplayConfig(faults=FaultRates(unavailable=1.0))) as server:
        result = call([("math-pro", row(server.base_url))], body(prompts[3]), retries=1)
    assert (result.llm, result.status, result.payload) == (None, 502, None)
    assert "math-pro" in result.error and "injected" not in result.error


# ---- timeouts ----


def test_a_hang_times_out_within_first_byte_and_falls_back(mmlu_like_dir, prompts):
    hanging = ReplayConfig(faults=FaultRates(hang=1.0), hang_seconds=30)
    with ReplayServer(mmlu_like_dir, hanging) as first, ReplayServer(mmlu_like_dir) as second:
        order = [("math-pro", row(first.base_url, timeout_first_byte_s=0.3)), ("cheap", row(second.base_url, "cheap"))]
        started = time.perf_counter()
        result = call(order, body(prompts[4]), retries=1)
        elapsed = time.perf_counter() - started
        assert first.request_log.totals() == {"hang": 2}
    assert summary(result) == [("math-pro", None, "Timeout(first_byte)")] * 2 + [("cheap", 200, None)]
    assert all(0.3 <= a.seconds < 0.8 for a in result.attempts[:2])
    assert elapsed < 2.5
    assert result.llm == "cheap"


def test_a_hanging_upstream_never_holds_the_client_past_total(mmlu_like_dir, prompts):
    hanging = ReplayConfig(faults=FaultRates(hang=1.0), hang_seconds=30)
    with ReplayServer(mmlu_like_dir, hanging) as server:
        started = time.perf_counter()
        result = call([("math-pro", row(server.base_url, timeout_total_s=0.5))], body(prompts[4]), retries=2)
        elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # the retries share the 0.5 s deadline
    assert result.attempts[-1].error == "Timeout(total)"
    assert (result.llm, result.status) == (None, 504)


def test_timeouts_come_from_the_row_with_defaults():
    assert Timeouts.of({}) == Timeouts(connect_s=5.0, first_byte_s=60.0, total_s=300.0)
    row_ = {"timeout_connect_s": 1, "timeout_first_byte_s": None, "timeout_total_s": 9.5}
    assert Timeouts.of(row_) == Timeouts(connect_s=1.0, first_byte_s=60.0, total_s=9.5)
    with pytest.raises(ValueError, match="total_s"):
        Timeouts.of({"timeout_total_s": 0})


def test_a_connection_refused_falls_back(mmlu_like_dir, prompts):
    with ReplayServer(mmlu_like_dir) as server:
        dead = ReplayServer(mmlu_like_dir).start()
        dead_url = dead.base_url
        dead.stop()
        order = [("math-pro", row(dead_url)), ("cheap", row(server.base_url, "cheap"))]
        result = call(order, body(prompts[5]), retries=1)
    assert summary(result) == [("math-pro", None, "ClientConnectorError")] * 2 + [("cheap", 200, None)]


# ---- the circuit breaker ----


def test_the_breaker_opens_after_n_failures_and_the_next_call_skips_the_llm(mmlu_like_dir, prompts):
    failing = ReplayConfig(faults=FaultRates(server_error=1.0))
    with ReplayServer(mmlu_like_dir, failing) as first, ReplayServer(mmlu_like_dir) as second:
        order = [("math-pro", row(first.base_url)), ("cheap", row(second.base_url, "cheap"))]
        policy = {"retries": 2, "breaker_failures": 3, "breaker_cooldown_s": 30.0}
        (opened, available_after_first), (skipped, available_after_second) = asyncio.run(
            calls([(order, body(prompts[6]), False), (order, body(prompts[7]), False)], **policy)
        )
        assert first.request_log.totals() == {"server_error": 3}  # none from the second call
    assert summary(opened) == [("math-pro", 500, "HTTP 500")] * 3 + [("cheap", 200, None)]
    assert not available_after_first and not available_after_second
    assert summary(skipped) == [("math-pro", None, "circuit_open"), ("cheap", 200, None)]
    assert skipped.llm == "cheap"


def test_the_breaker_half_opens_after_its_cooldown_and_a_success_closes_it(mmlu_like_dir, prompts):
    failing = ReplayConfig(faults=FaultRates(server_error=1.0))
    with ReplayServer(mmlu_like_dir, failing) as bad, ReplayServer(mmlu_like_dir) as good:
        policy = {"retries": 1, "breaker_failures": 2, "breaker_cooldown_s": 0.3, "pause_s": 0.4}
        requests = [
            ([("math-pro", row(bad.base_url))], body(prompts[1]), False),  # opens it
            ([("math-pro", row(bad.base_url))], body(prompts[1]), False),  # half-open: one trial, fails, re-opens
            ([("math-pro", row(good.base_url))], body(prompts[1]), False),  # half-open: the trial succeeds
        ]
        (first, _), (second, reopened), (third, closed) = asyncio.run(calls(requests, **policy))
        assert bad.request_log.totals() == {"server_error": 3}
    assert summary(first) == [("math-pro", 500, "HTTP 500")] * 2
    assert summary(second) == [("math-pro", 500, "HTTP 500"), ("math-pro", None, "circuit_open")]
    assert not reopened
    assert summary(third) == [("math-pro", 200, None)] and closed


def test_every_breaker_open_is_a_503(mmlu_like_dir, prompts):
    failing = ReplayConfig(faults=FaultRates(server_error=1.0))
    with ReplayServer(mmlu_like_dir, failing) as bad:
        order = [("math-pro", row(bad.base_url))]
        policy = {"retries": 0, "breaker_failures": 1}
        _, (result, _) = asyncio.run(calls([(order, body(prompts[1]), False)] * 2, **policy))
    assert (result.status, summary(result)) == (503, [("math-pro", None, "circuit_open")])


# ---- requests the upstream refuses ----


def test_a_404_is_not_retried_nor_passed_through_and_does_not_fall_back(mmlu_like_dir, prompts):
    with ReplayServer(mmlu_like_dir) as first, ReplayServer(mmlu_like_dir) as second:
        order = [("math-pro", row(first.base_url, model_id="gpt-17")), ("cheap", row(second.base_url, "cheap"))]
        result = call(order, body(prompts[1]), retries=2)
        assert first.request_log.totals() == {"model_not_found": 1}
        assert second.request_log.totals() == {}
    assert summary(result) == [("math-pro", 404, "HTTP 404")]
    assert result.llm is None and result.payload is None
    assert result.status == 502  # a model id the upstream does not know: the gateway's catalog is wrong
    assert "math-pro" in result.error and "404" in result.error
    assert "does not exist" not in result.error and "gpt-17" not in result.error


def test_a_400_is_given_back_as_a_400_with_a_generic_message(mmlu_like_dir, prompts):
    with ReplayServer(mmlu_like_dir) as server:
        request = {"model": "uniroute", "messages": [{"role": "system", "content": "no user"}]}
        result = call([("math-pro", row(server.base_url))], request)
    assert (result.status, summary(result)) == (400, [("math-pro", 400, "HTTP 400")])
    assert "role 'user'" not in result.error


# ---- streaming ----


def test_a_stream_passes_the_sse_through_with_usage_from_its_final_chunk(mmlu_like_dir, prompts, recorded):
    with ReplayServer(mmlu_like_dir, ReplayConfig(stream_chunk_delay_ms=5)) as server:
        result = call([("math-pro", row(server.base_url))], body(prompts[8]), stream=True)
    text = result.payload["sse"]
    assert streamed_text(text) == recorded["math-pro", 8]
    events = sse_data(text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"  # the client did not ask for usage...
    assert result.usage["completion_tokens"] > 0  # ...but the gateway did, so it knows what the answer cost
    assert realised_cost(row(server.base_url), result.usage) == pytest.approx(
        (result.usage["prompt_tokens"] + result.usage["completion_tokens"]) / 1e6
    )
    assert summary(result) == [("math-pro", 200, None)]


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_is_always_asked_and_relayed_only_when_the_client_asked(mmlu_like_dir, prompts, include_usage):
    with ReplayServer(mmlu_like_dir) as server:
        request = body(prompts[8], stream_options={"include_usage": include_usage})
        result = call([("math-pro", row(server.base_url))], request, stream=True)
    events = sse_data(result.payload["sse"])
    assert result.usage["completion_tokens"] > 0  # charged what it cost, whatever the client asked
    relayed = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
    assert relayed == ([result.usage] if include_usage else [])
    assert events[-1] == "[DONE]"


def test_a_stream_falls_back_before_its_first_byte(mmlu_like_dir, prompts, recorded):
    failing = ReplayConfig(faults=FaultRates(server_error=1.0))
    with ReplayServer(mmlu_like_dir, failing) as first, ReplayServer(mmlu_like_dir) as second:
        order = [("math-pro", row(first.base_url)), ("generalist", row(second.base_url, "generalist"))]
        result = call(order, body(prompts[9]), stream=True, retries=1)
    assert summary(result) == [("math-pro", 500, "HTTP 500")] * 2 + [("generalist", 200, None)]
    assert streamed_text(result.payload["sse"]) == recorded["generalist", 9]


@pytest.mark.parametrize(
    ("fault", "error"), [("mid_stream_drop", "mid_stream(ClientPayloadError)"), ("truncated", "mid_stream(NoDone)")]
)
def test_a_stream_broken_after_its_first_byte_ends_with_an_error_event(mmlu_like_dir, prompts, fault, error):
    broken = ReplayConfig(faults=FaultRates(**{fault: 1.0}))
    with ReplayServer(mmlu_like_dir, broken) as first, ReplayServer(mmlu_like_dir) as second:
        order = [("math-pro", row(first.base_url)), ("cheap", row(second.base_url, "cheap"))]
        result = call(order, body(prompts[9]), stream=True)
        assert second.request_log.totals() == {}  # no fallback after the first byte
    events = sse_data(result.payload["sse"])
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "stream_interrupted"
    assert json.loads(events[0])["object"] == "chat.completion.chunk"
    assert summary(result) == [("math-pro", 200, error)]


# ---- keys ----


async def _with_recording_server(status: int, handler_body: dict, action):
    """An upstream on 127.0.0.1 that records each request's headers and body and answers ``status``."""
    seen: list[tuple[dict, dict]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        return web.json_response(handler_body, status=status)

    async with serving(handle) as base_url:
        return await action(base_url), seen


def test_the_key_is_sent_from_its_variable_and_never_appears_in_errors_or_logs(monkeypatch, caplog):
    monkeypatch.setenv("UNIROUTE_KEY_TEST", SECRET)
    caplog.set_level(logging.DEBUG)
    leaky = {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request_error"}}

    async def action(base_url: str) -> UpstreamResult:
        async with Upstreams(base_delay_s=0.01) as upstreams:
            target = row(base_url, model_id="provider/model-x", api_key_env="UNIROUTE_KEY_TEST")
            return await upstreams.call([("x", target)], body("hi", temperature=0), stream=False)

    result, seen = asyncio.run(_with_recording_server(401, leaky, action))
    assert len(seen) == 1  # a 401 is not retried
    headers, sent = seen[0]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert sent == {"model": "provider/model-x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert summary(result) == [("x", 401, "HTTP 401")]
    assert result.status == 502
    everything = " ".join([result.error, repr(result), caplog.text])
    assert SECRET not in everything and "Incorrect API key" not in everything


def test_a_stream_request_asks_for_usage_and_a_missing_key_variable_falls_back(
    monkeypatch, caplog, mmlu_like_dir, prompts
):
    monkeypatch.delenv("UNIROUTE_KEY_MISSING", raising=False)

    async def action(base_url: str) -> UpstreamResult:
        async with Upstreams() as upstreams:
            order = [("keyless", row(base_url, api_key_env="UNIROUTE_KEY_MISSING")), ("other", row(base_url, "other"))]
            return await upstreams.call(order, body("hi", stream=True), stream=True)

    result, seen = asyncio.run(_with_recording_server(400, {"error": {"message": "no"}}, action))
    assert [a.error for a in result.attempts] == ["api_key_env UNIROUTE_KEY_MISSING not set", "HTTP 400"]
    assert len(seen) == 1 and "Authorization" not in seen[0][0]
    assert seen[0][1]["stream"] is True and seen[0][1]["stream_options"] == {"include_usage": True}
    assert seen[0][1]["model"] == "other"


def test_a_key_variable_outside_the_allowed_prefix_is_never_sent(monkeypatch, mmlu_like_dir, prompts):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "a-database-password")  # a row that bypassed the catalog's check

    async def action(base_url: str) -> UpstreamResult:
        async with Upstreams() as upstreams:
            order = [("leaky", row(base_url, api_key_env="DAGSTER_PG_PASSWORD")), ("other", row(base_url, "other"))]
            return await upstreams.call(order, body("hi"), stream=False)

    result, seen = asyncio.run(_with_recording_server(400, {"error": {"message": "no"}}, action))
    assert [a.error for a in result.attempts] == ["api_key_env DAGSTER_PG_PASSWORD not allowed", "HTTP 400"]
    assert len(seen) == 1 and "a-database-password" not in str(seen)


@pytest.mark.parametrize(
    "payload",
    [{"choices": []}, {"choices": [{"message": None}]}, {"id": "x"}, {"choices": [{"message": {"content": 3}}]}],
)
def test_a_200_without_an_answer_is_retried_on_the_next_llm(payload, mmlu_like_dir, prompts):
    async def action(base_url: str) -> UpstreamResult:
        async with Upstreams(retries=0) as upstreams:
            return await upstreams.call([("empty", row(base_url, "empty"))], body("hi"), stream=False)

    result, seen = asyncio.run(_with_recording_server(200, payload, action))
    assert result.llm is None and [a.error for a in result.attempts] == ["MalformedBody"] and len(seen) == 1


# ---- bounds on what comes back ----


def _concurrently(order: list, request: dict, stream: bool = False, n: int = 4, **policy) -> list[UpstreamResult]:
    """``n`` calls at once through one Upstreams; streams read to their end."""

    async def run() -> list[UpstreamResult]:
        async with Upstreams(**{"base_delay_s": 0.01, "retries": 0, **policy}) as upstreams:

            async def one() -> UpstreamResult:
                result = await upstreams.call(order, request, stream)
                if result.stream is not None:
                    result.payload = {"sse": b"".join([chunk async for chunk in result.stream]).decode()}
                return result

            return await asyncio.gather(*(one() for _ in range(n)))

    return asyncio.run(run())


@pytest.mark.parametrize("value", ["inf", "1e300"])
def test_an_endless_retry_after_is_capped_and_moves_on(value):
    with HostileUpstream(f"retry_after:{value}") as hostile, HostileUpstream() as honest:
        order = [("a", row(hostile.base_url, "a")), ("b", row(honest.base_url, "b"))]
        answered = _concurrently(order, body("hi"), retries=2)
        limited = _concurrently(order[:1], body("hi"))
    assert {r.llm for r in answered} == {"b"}  # no wait of 1e300 s: on to the next LLM at once
    assert {(r.status, r.retry_after_s) for r in limited} == {(429, 60.0)}


@pytest.mark.parametrize("mode", ["huge_body", "huge_length"])
def test_a_huge_answer_is_refused_without_being_read(mode):
    with HostileUpstream(mode, huge_bytes=48 * 2**20) as hostile:
        tracemalloc.start()
        try:
            results = _concurrently([("a", row(hostile.base_url, "a"))], body("hi"), max_response_bytes=2**20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert {(r.llm, r.status) for r in results} == {(None, 502)}
    assert {a.error for r in results for a in r.attempts} == {"ResponseTooLarge"}
    assert peak < 24 * 2**20  # four answers of 48 MB each were never held


def test_an_endless_sse_line_ends_the_stream_with_an_error_event():
    with HostileUpstream("endless_line", huge_bytes=48 * 2**20) as hostile:
        tracemalloc.start()
        try:
            results = _concurrently([("a", row(hostile.base_url, "a"))], body("hi"), stream=True, max_event_bytes=2**20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    for result in results:
        assert json.loads(sse_data(result.payload["sse"])[-1])["error"]["code"] == "stream_interrupted"
        assert summary(result) == [("a", 200, "mid_stream(SSELineTooLong)")]
    assert peak < 24 * 2**20


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_an_upstream_error_and_the_prompt_never_reaches_the_other_origin(status):
    with HostileUpstream() as other, HostileUpstream(f"redirect:{status}:{other.base_url}") as hostile:
        results = _concurrently([("a", row(hostile.base_url, "a"))], body("the secret prompt"))
        assert other.requests == []
    assert {(r.llm, r.status) for r in results} == {(None, 502)}
    assert {a.error for r in results for a in r.attempts} == {f"HTTP {status}"}


def test_a_huge_content_length_falls_back_to_the_next_llm():
    """A Content-Length over the bound is the endpoint's fault, like a huge body without one: the next LLM answers
    (it used to end the request as if the LLM had refused it, "HTTP 200", with no fallback)."""
    with HostileUpstream("huge_length", huge_bytes=48 * 2**20) as hostile, HostileUpstream() as honest:
        order = [("a", row(hostile.base_url, "a")), ("b", row(honest.base_url, "b"))]
        results = _concurrently(order, body("hi"), n=1, max_response_bytes=2**20)
    assert [summary(r) for r in results] == [[("a", None, "ResponseTooLarge"), ("b", 200, None)]]


def test_a_200_nested_past_the_json_parsers_recursion_falls_back_to_the_next_llm():
    """It used to raise RecursionError out of the call (a 500 from the gateway) instead of an InvalidJSON try."""
    deep = b"[" * 100_000 + b"]" * 100_000

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=deep, content_type="application/json")

    async def run() -> UpstreamResult:
        async with serving(handle) as deep_url:
            with HostileUpstream() as honest:
                order = [("a", row(deep_url, "a")), ("b", row(honest.base_url, "b"))]
                async with Upstreams(retries=0) as upstreams:
                    return await upstreams.call(order, body("hi"), stream=False)

    result = asyncio.run(run())
    assert summary(result) == [("a", None, "InvalidJSON"), ("b", 200, None)]
