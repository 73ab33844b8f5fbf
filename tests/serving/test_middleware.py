"""serving.middleware over real HTTP: a dummy /v1/chat/completions behind the middleware, on uvicorn, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from serving import keys, middleware
from serving.keys import KeyStore, hash_secret
from serving.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    ErrorShapingMiddleware,
    check_bind,
    error_response,
    http_exception_handler,
    json_depth,
    read_json,
)

from .conftest import uvicorn_thread

ALICE = "alice-secret-0123456789abcdef"
LIMITED = "limited-secret-0123456789abcdef"
MAX_BYTES = 1_000_000


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class App:
    """The dummy gateway: its handler echoes the key's policy; ``ran`` counts the requests it saw."""

    def __init__(self, store: KeyStore) -> None:
        self.ran = 0
        self.second_chunk = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/stream", self.stream, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.health, methods=["GET"]),
            ],
            middleware=[
                Middleware(ErrorShapingMiddleware),
                Middleware(BodyLimitMiddleware, max_bytes=MAX_BYTES),
                Middleware(AuthMiddleware, store=store),
            ],
            exception_handlers={HTTPException: http_exception_handler},
        )

    async def chat(self, request):
        self.ran += 1
        body = await read_json(request)
        if body.get("boom"):
            raise RuntimeError("boom-marker in the handler")
        policy = request.state.key
        policy.require_model(body.get("model"))
        models = sorted(policy.models) if policy.models is not None else None
        return JSONResponse({"key_id": policy.key_id, "models": models, "request_id": request.state.request_id})

    async def stream(self, request):
        async def chunks():
            yield b"first\n"
            deadline = time.monotonic() + 5.0  # the client sets the event once it has read the first chunk
            while not self.second_chunk.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            yield b"second\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    async def health(self, request):
        return JSONResponse({"status": "ok"})


@contextlib.contextmanager
def serve(store: KeyStore):
    """(App, httpx.Client) with the app served by uvicorn on a thread, as the gateway is."""
    app = App(store)
    with (
        uvicorn_thread(app.app, startup_s=30, shutdown_s=10, lifespan="off", access_log=False) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        yield app, client


def post(client, body=None, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))
    if body is not None:
        kwargs["json"] = body
    return client.post("/v1/chat/completions", headers=headers, **kwargs)


def assert_error(response, status, type_, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code), error
    return error


CHAT = {"model": "uniroute", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def keyed(tmp_path):
    """A store with alice (no limits) and a key limited to the "cheap" LLM."""
    path = tmp_path / "keys.yaml"
    path.write_text(f"- id: limited\n  sha256: {hash_secret(LIMITED)}\n  models: [cheap]\n")
    return KeyStore.load(path, environ={keys.ENV_VAR: f"alice:{ALICE}"})


def test_missing_or_wrong_key_is_401_and_a_right_one_reaches_the_handler(keyed):
    with serve(keyed) as (app, client):
        for key in (None, "wrong-secret-0123456789abcdef", ALICE[:-1]):
            response = post(client, CHAT, key)
            assert_error(response, 401, "authentication_error", "invalid_api_key")
            assert response.headers["www-authenticate"].startswith("Bearer")
        basic = post(client, CHAT, headers={"Authorization": f"Basic {ALICE}"})
        assert_error(basic, 401, "authentication_error", "invalid_api_key")
        assert app.ran == 0
        response = post(client, CHAT, ALICE)
        assert response.status_code == 200
        assert response.json()["key_id"] == "alice"
        assert response.headers["x-request-id"] == response.json()["request_id"]
        assert client.get("/health").status_code == 200  # no key needed
        assert_error(client.get("/v1/models"), 401, "authentication_error", "invalid_api_key")  # any other path does
        missing = client.get("/v1/nothing-here", headers={"Authorization": f"Bearer {ALICE}"})
        assert_error(missing, 404, "invalid_request_error", None)  # Starlette's 404 in OpenAI's shape


def test_metrics_are_loopback_only_without_an_admin_key_and_never_for_a_client_key(keyed):
    with serve(keyed) as (_, client):
        assert client.get("/metrics").status_code == 200  # the operator, on this machine
        behind_a_proxy = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})  # uvicorn trusts loopback
        assert_error(behind_a_proxy, 403, "permission_error", "admin_required")
        as_a_client = client.get("/metrics", headers={"Authorization": f"Bearer {ALICE}"})
        assert_error(as_a_client, 403, "permission_error", "admin_required")


def test_rate_and_spend_limits_are_in_the_response_headers():
    store = KeyStore.load(environ={keys.ENV_VAR: f"alice:{ALICE}:0.5:30"})
    with serve(store) as (_, client):
        response = post(client, CHAT, ALICE)
    assert response.headers["x-ratelimit-limit-requests"] == "30"
    assert response.headers["x-ratelimit-remaining-requests"] == "29"
    assert "x-ratelimit-limit-usd" not in response.headers  # the handler reports the spend left once it knows it


def test_without_keys_requests_are_anonymous():
    with serve(KeyStore()) as (_, client):
        response = post(client, CHAT)
        assert response.status_code == 200
        assert response.json() == {"key_id": "anonymous", "models": None, "request_id": response.json()["request_id"]}


def test_a_key_limited_to_models_is_its_policy(keyed):
    with serve(keyed) as (_, client):
        response = post(client, CHAT, LIMITED)
        assert response.status_code == 200, response.text
        assert response.json()["models"] == ["cheap"]
        assert post(client, {**CHAT, "model": "cheap"}, LIMITED).status_code == 200
        refused = post(client, {**CHAT, "model": "math-pro"}, LIMITED)
        error = assert_error(refused, 403, "permission_error", "model_not_allowed")
        assert "math-pro" in error["message"] and error["param"] == "model"


def test_rate_limit_is_429_with_retry_after_and_recovers():
    clock = Clock(100.0)
    store = KeyStore.load(environ={keys.ENV_VAR: f"alice:{ALICE}::2"}, clock=clock)  # 2 requests per minute
    with serve(store) as (app, client):
        assert post(client, CHAT, ALICE).status_code == 200
        assert post(client, CHAT, ALICE).status_code == 200
        response = post(client, CHAT, ALICE)
        assert_error(response, 429, "rate_limit_error", "rate_limit_exceeded")
        assert response.headers["retry-after"] == "30"
        assert app.ran == 2
        clock.now += 30.0
        assert post(client, CHAT, ALICE).status_code == 200


def test_spend_limit_is_429_once_recorded_spend_crosses_it():
    wall = Clock(datetime(2030, 5, 1, 22, 0, tzinfo=UTC).timestamp())
    store = KeyStore.load(environ={keys.ENV_VAR: f"alice:{ALICE}:0.01"}, wall_clock=wall)
    with serve(store) as (_, client):
        assert post(client, CHAT, ALICE).status_code == 200
        store.record_spend("alice", 0.006)
        assert post(client, CHAT, ALICE).status_code == 200
        store.record_spend("alice", 0.005)
        response = post(client, CHAT, ALICE)
        assert_error(response, 429, "insufficient_quota", "insufficient_quota")
        assert response.headers["retry-after"] == "7200"  # until midnight UTC


def test_a_5_mb_body_is_413_at_once_and_never_reaches_the_handler(keyed):
    with serve(keyed) as (app, client):
        started = time.perf_counter()
        response = post(client, key=ALICE, content=b"x" * 5_000_000, headers={"Content-Type": "application/json"})
        assert time.perf_counter() - started < 1.0
        assert_error(response, 413, "invalid_request_error", "request_too_large")
        assert app.ran == 0

        def chunks():  # no Content-Length: counted as it streams in
            for _ in range(50):
                yield b" " * 100_000

        started = time.perf_counter()
        response = post(client, key=ALICE, content=chunks(), headers={"Content-Type": "application/json"})
        assert time.perf_counter() - started < 1.0
        assert_error(response, 413, "invalid_request_error", "request_too_large")
        assert post(client, CHAT, ALICE).status_code == 200  # the limit leaves normal requests alone


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code", "says"),
    [
        (b'{"model": "uniroute", "x": "\xff\xfe"}', "application/json", 400, "invalid_utf8", "UTF-8 at byte 28"),
        (b"[" * 10_000 + b"]" * 10_000, "application/json", 400, "invalid_json", "10000 levels deep"),
        (b'[{"model": "uniroute"}]', "application/json", 400, "invalid_json", "got an array"),
        (b'{"model": "uniroute", "x": NaN}', "application/json", 400, "invalid_json", "NaN"),
        (b'{"model": "uniroute",', "application/json", 400, "invalid_json", "not JSON"),
        (b"", "application/json", 400, "invalid_json", "empty"),
        (b'{"model": "uniroute"}', "text/plain", 415, "invalid_type", "text/plain"),
        (b'{"model": "uniroute"}', "application/json; charset=latin-1", 415, "invalid_type", "latin-1"),
    ],
)
def test_bad_bodies_are_400_naming_the_problem(keyed, content, content_type, status, code, says):
    with serve(keyed) as (_, client):
        started = time.perf_counter()
        response = post(client, key=ALICE, content=content, headers={"Content-Type": content_type})
        assert time.perf_counter() - started < 1.0
        error = assert_error(response, status, "invalid_request_error", code)
        assert says in error["message"]


def test_json_depth_ignores_brackets_in_strings_and_is_fast():
    assert json_depth(b'{"a": "[[[{", "b": [1, {"c": "\\\\"}, "\\"]]"]}') == 3
    assert json_depth(b"[" * 10_000 + b"]" * 10_000) == 10_000
    prompt = b'{"messages": [{"content": "' + b'text [with] \\"brackets\\" {}' * 40_000 + b'"}]}'
    started = time.process_time()
    assert json_depth(prompt) == 3
    assert time.process_time() - started < 0.5  # ~1 MB; a few ms when the machine is idle


def test_a_body_with_few_brackets_skips_the_depth_scan_and_a_deep_one_is_still_refused(keyed, monkeypatch):
    """Opening brackets bound the depth (counted in C): a usual chat body, with fewer than ``max_depth`` of them,
    costs no vectorised scan; one with more is scanned, and refused only when really nested too deep."""
    scanned = []
    monkeypatch.setattr(middleware, "json_depth", lambda data: scanned.append(len(data)) or json_depth(data))
    with serve(keyed) as (_, client):
        assert post(client, CHAT, ALICE).status_code == 200
        assert scanned == []
        shallow = {**CHAT, "messages": [{"role": "user", "content": "[{" * 40}]}
        assert post(client, shallow, ALICE).status_code == 200
        deep = b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"
        response = post(client, key=ALICE, content=deep, headers={"Content-Type": "application/json"})
        assert (
            "nested 41 levels deep" in assert_error(response, 400, "invalid_request_error", "invalid_json")["message"]
        )
    assert len(scanned) == 2


def test_an_exception_in_the_handler_is_a_500_without_traceback(keyed, caplog):
    caplog.set_level(logging.ERROR, logger="serving.middleware")
    with serve(keyed) as (_, client):
        response = post(client, {**CHAT, "boom": True}, ALICE)
    error = assert_error(response, 500, "server_error", "internal_error")
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"]
    for leak in ("Traceback", "RuntimeError", "boom-marker", "chat"):
        assert leak not in response.text
    assert "boom-marker" in caplog.text and request_id in caplog.text  # the traceback went to the server log


def test_streamed_responses_pass_through_unbuffered(keyed):
    with serve(keyed) as (app, client):
        started = time.perf_counter()
        with client.stream("GET", "/v1/stream", headers={"Authorization": f"Bearer {ALICE}"}) as response:
            lines = response.iter_lines()
            assert next(lines) == "first"
            first_after = time.perf_counter() - started
            app.second_chunk.set()
            assert next(lines) == "second"
    assert first_after < 2.0  # buffered, it would arrive with the second one, after the 5 s timeout


def test_secrets_never_reach_the_log(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    with serve(keyed) as (_, client):
        post(client, CHAT, ALICE)
        post(client, CHAT, ALICE + "typo")
        post(client, {**CHAT, "boom": True}, LIMITED)
    assert "refused: 401" in caplog.text  # the refusal is logged, without the key
    for secret in (ALICE, LIMITED, ALICE + "typo"):
        assert secret not in caplog.text
        assert secret not in repr(keyed)


def test_error_response_types():
    def kind(status, code=None):
        return json.loads(error_response(status, "m", code=code).body)["error"]["type"]

    assert [kind(400), kind(401), kind(403), kind(404), kind(413), kind(500), kind(502)] == [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "invalid_request_error",
        "invalid_request_error",
        "server_error",
        "server_error",
    ]
    assert (kind(429, "rate_limit_exceeded"), kind(429, "insufficient_quota")) == (
        "rate_limit_error",
        "insufficient_quota",
    )


LOOPBACK = ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LocalHost", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_check_bind_loopback_without_keys_warns(host):
    assert check_bind(host, KeyStore(), allow_unauthenticated=False) == (
        f"no client keys configured: serving loopback only ({host})"
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.5", "gateway.example.com"])
def test_check_bind_elsewhere_needs_keys_or_an_explicit_allow(host, keyed):
    with pytest.raises(ValueError, match="no client keys are configured"):
        check_bind(host, KeyStore(), allow_unauthenticated=False)
    assert "WITHOUT client keys" in check_bind(host, KeyStore(), allow_unauthenticated=True)
    assert check_bind(host, keyed, allow_unauthenticated=False) is None
