"""openai_compat.transport against real servers on 127.0.0.1: one request, its timeouts, its bounds, its key."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from openai_compat import RequestFailed, Timeouts, bearer_headers, chat_url, post_chat
from tests.openai_compat.servers import serving
from tests.serving.hostile_upstream import HostileUpstream

DEFAULT = Timeouts()
BODY = {"model": "m", "messages": [{"role": "user", "content": "the secret prompt"}]}


async def _post(base_url: str, timeouts: Timeouts = DEFAULT, max_response_bytes: int = 2**20) -> bytes:
    async with aiohttp.ClientSession() as session:
        return await post_chat(session, chat_url(base_url), BODY, {}, timeouts, None, max_response_bytes)


def post(base_url: str, **options: object) -> bytes:
    return asyncio.run(_post(base_url, **options))


def failure(base_url: str, **options: object) -> RequestFailed:
    with pytest.raises(RequestFailed) as caught:
        post(base_url, **options)
    return caught.value


def test_an_answer_is_its_body():
    with HostileUpstream() as upstream:
        assert b'"content": "fine"' in post(upstream.base_url)
        assert upstream.requests == [BODY]


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_not_followed_and_not_retried(status):
    with HostileUpstream() as other, HostileUpstream(f"redirect:{status}:{other.base_url}") as hostile:
        failed = failure(hostile.base_url)
        assert other.requests == []  # the prompt never reached the other origin
    assert (failed.kind, failed.status, failed.retryable) == (f"HTTP {status}", status, False)


@pytest.mark.parametrize("mode", ["huge_body", "huge_length"])
def test_a_huge_answer_is_a_retryable_failure_never_read_whole(mode):
    with HostileUpstream(mode, huge_bytes=48 * 2**20) as hostile:
        failed = failure(hostile.base_url, max_response_bytes=2**20)
    assert (failed.kind, failed.status, failed.retryable) == ("ResponseTooLarge", None, True)
    assert max(hostile.sent) < 48 * 2**20


def test_a_429_is_retryable_with_its_retry_after_capped():
    with HostileUpstream("retry_after:inf") as hostile:
        failed = failure(hostile.base_url)
    assert (failed.kind, failed.retry_after_s, failed.retryable) == ("HTTP 429", 60.0, True)


@pytest.mark.parametrize(("first_byte_s", "phase"), [(0.2, "first_byte"), (10.0, "total")])
def test_a_hanging_endpoint_times_out_in_its_phase(first_byte_s, phase):
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async def run() -> RequestFailed:
        async with serving(hang) as base_url:
            with pytest.raises(RequestFailed) as caught:
                await _post(base_url, Timeouts(connect_s=1.0, first_byte_s=first_byte_s, total_s=0.5))
            return caught.value

    failed = asyncio.run(run())
    assert (failed.label, failed.retryable) == (f"Timeout({phase})", True)


def test_a_key_is_read_from_its_variable_and_a_missing_one_is_named_not_shown(monkeypatch):
    monkeypatch.setenv("UNIROUTE_TEST_KEY", "sk-secret")
    assert bearer_headers("UNIROUTE_TEST_KEY") == {"Authorization": "Bearer sk-secret"}
    assert bearer_headers(None) == {}
    monkeypatch.delenv("UNIROUTE_TEST_KEY")
    with pytest.raises(RequestFailed, match=r"^api_key_env UNIROUTE_TEST_KEY not set$") as caught:
        bearer_headers("UNIROUTE_TEST_KEY")
    assert not caught.value.retryable


def test_the_chat_url_of_a_base_url():
    assert chat_url("http://h/v1/") == chat_url("http://h/v1") == "http://h/v1/chat/completions"
