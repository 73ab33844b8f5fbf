"""The gateway's safety middleware (pure ASGI, so streamed responses pass through unbuffered) and its helpers.

Wire it inside the Starlette app, outermost first, so that Starlette's own ``ServerErrorMiddleware`` (plain-text
500s) never sees an exception::

    Starlette(
        routes=...,
        middleware=[
            Middleware(ErrorShapingMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=1_000_000),
            Middleware(AuthMiddleware, store=KeyStore.load(keys_file)),
        ],
        exception_handlers={HTTPException: http_exception_handler},
    )

and in a handler: ``body = await read_json(request)``, ``policy = request.state.key``,
``policy.require_model(body.get("model"))``; before the upstream call ``hold = store.reserve(policy, worst_usd)``,
after the answer ``store.settle(hold, usd)`` (or ``store.release(hold)``). A
``ClientError`` (``RequestError``, ``AuthError``, ``LimitError``) a handler raises becomes its OpenAI-shaped 4xx;
any other exception a 500 with a request id, the traceback in the server log only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import uuid
from collections.abc import Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from openai_compat import json_depth
from serving.chat_request import short_repr
from serving.keys import ENV_VAR, SPEND_RECHECK_S, ClientError, KeyPolicy, KeyStore

log = logging.getLogger(__name__)

Scope = dict
Receive = Callable
Send = Callable
PUBLIC_PATHS = frozenset({"/health", "/ready"})
ADMIN_PATHS = frozenset({"/metrics"})  # key ids and their spend: an operator's page (KeyStore.check_admin)
DEFAULT_MAX_BYTES = 1_000_000
#: The header OpenAI's SDKs obey over their own rule (which retries 408, 409, 429 and 5xx): ``false`` stops them.
SHOULD_RETRY_HEADER = "x-should-retry"
#: Error codes no retry can change (a spent budget, no LLM the key may reach), whatever their status.
FINAL_CODES = frozenset({"insufficient_quota", "no_llm_available"})


class RequestError(ClientError):
    """A malformed request (400, or 413/415): message, OpenAI ``param`` and ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(status, message, code, param)


def error_type(status: int, code: str | None = None) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "insufficient_quota" if code == "insufficient_quota" else "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def should_retry(status: int, code: str | None = None) -> bool:
    """May the client send this request again and hope for another answer? Timeouts, conflicts, rate limits and
    server errors yes (what the SDKs retry on their own), other 4xx and :data:`FINAL_CODES` no."""
    return code not in FINAL_CODES and (status in (408, 409, 429) or status >= 500)


def upstream_error_code(status: int) -> str:
    """The OpenAI-style ``code`` of an error status that came from upstream."""
    return {429: "rate_limit_exceeded", 503: "upstream_unavailable", 504: "upstream_timeout"}.get(
        status, "upstream_error" if status >= 500 else "invalid_request"
    )


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    retry: bool | None = None,
) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status``: OpenAI's error shape, with
    ``x-should-retry`` saying whether a retry can help (``retry``, default :func:`should_retry`), so an SDK never
    resends a final refusal."""
    body = {"error": {"message": message, "type": error_type(status, code), "param": param, "code": code}}
    retry = should_retry(status, code) if retry is None else retry
    return JSONResponse(body, status, {**(headers or {}), SHOULD_RETRY_HEADER: str(retry).lower()})


def client_error_response(exc: ClientError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)


async def http_exception_handler(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's 404/405 in OpenAI's shape (``exception_handlers={HTTPException: http_exception_handler}``)."""
    return error_response(exc.status_code, f"{request.method} {short_repr(request.url.path)}: {exc.detail}", None, None)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class _Tracking:
    """``send`` that remembers whether the response has started."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class ErrorShapingMiddleware:
    """Exceptions out of the app become OpenAI-shaped errors: a ``ClientError`` its 4xx, anything else a 500.

    Every request gets an id (``request.state.request_id``, header ``X-Request-ID``) that a 500 quotes and the
    log line carries; a handler may replace it before its response starts (the header sends the one it left).
    When the response has already started (a stream), the exception is re-raised: the server logs it and closes
    the connection, so the client sees a cut-off response rather than a clean end.
    """

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]  # ours, not the client's: nothing from outside gets into the log line
        state = scope.setdefault("state", {})
        state["request_id"] = request_id

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":  # the id as the handler left it (a chat request's: signed)
                raw_id = state["request_id"].encode()
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", raw_id)]}
            await send(message)

        tracking = _Tracking(send_with_id)
        try:
            await self.app(scope, receive, tracking)
        except ClientError as exc:
            if tracking.started:
                raise
            await client_error_response(exc)(scope, receive, tracking)
        except Exception:
            if tracking.started:
                raise
            request_id = state["request_id"]
            log.exception("internal error in %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
            response = error_response(
                500, f"internal error (request id {request_id}); the server log has the details", None, "internal_error"
            )
            await response(scope, receive, tracking)


class _BodyTooLarge(RequestError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body: larger than {max_bytes} bytes", "body", "request_too_large")


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes`` (its Content-Length, or the bytes as they stream in: nothing is held);
    415 for a POST/PUT/PATCH under ``/v1/`` whose Content-Type is not JSON in UTF-8 (none at all is allowed).
    Decoding the JSON itself is ``read_json``'s job in the handler."""

    def __init__(self, app: Callable, max_bytes: int = DEFAULT_MAX_BYTES, json_prefix: str = "/v1/") -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes!r}: expected a positive byte count")
        self.app = app
        self.max_bytes = max_bytes
        self.json_prefix = json_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_headers(scope)
        except RequestError as exc:
            await client_error_response(exc)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        tracking = _Tracking(send)
        try:
            await self.app(scope, limited_receive, tracking)
        except _BodyTooLarge as exc:
            if tracking.started:
                raise
            await client_error_response(exc)(scope, receive, tracking)

    def _check_headers(self, scope: Scope) -> None:
        length = _header(scope, b"content-length")
        if length is not None:
            length = length.strip()
            if not length.isdigit() or not length.isascii():
                raise RequestError(400, f"Content-Length: {short_repr(length)} is not a byte count", "Content-Length")
            if len(length) > 18 or int(length) > self.max_bytes:
                raise _BodyTooLarge(self.max_bytes)
        if scope.get("method") in ("POST", "PUT", "PATCH") and scope.get("path", "").startswith(self.json_prefix):
            content_type = _header(scope, b"content-type")
            if content_type is None:
                return
            media, *params = (part.strip().lower() for part in content_type.split(";"))
            charset = next((p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), "utf-8")
            if not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
                raise RequestError(
                    415,
                    f"Content-Type: {short_repr(content_type)}: send application/json",
                    "Content-Type",
                    "invalid_type",
                )
            if charset not in ("utf-8", "utf8"):
                raise RequestError(
                    415, f"Content-Type: charset={short_repr(charset)}: send UTF-8", "Content-Type", "invalid_type"
                )


class AuthMiddleware:
    """Every path but ``public_paths`` needs ``Authorization: Bearer <key>`` when ``store`` has keys (401
    otherwise); the key's ``KeyPolicy`` goes to ``request.state.key`` (``ANONYMOUS`` for an empty store) after its
    spend (429 ``insufficient_quota``, as this process last read it: ``KeyStore.check_spend`` with
    ``SPEND_RECHECK_S``; the handler's hold is what holds the limit) and rate (429 ``rate_limit_exceeded``,
    ``Retry-After``) are checked.
    ``admin_paths`` need an admin key, or a loopback peer when none is configured (:meth:`KeyStore.check_admin`).

    The response carries OpenAI's ``x-ratelimit-limit-requests`` / ``x-ratelimit-remaining-requests`` for a key
    with a rate limit, and ``x-ratelimit-limit-usd`` / ``x-ratelimit-remaining-usd`` (per UTC day) for one with a
    spend limit; a handler updates the spend left in ``request.state.remaining_usd`` (after its hold or answer).
    """

    def __init__(
        self,
        app: Callable,
        store: KeyStore,
        public_paths: frozenset[str] = PUBLIC_PATHS,
        admin_paths: frozenset[str] = ADMIN_PATHS,
    ) -> None:
        self.app = app
        self.store = store
        self.public_paths = frozenset(public_paths)
        self.admin_paths = frozenset(admin_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        admin = scope.get("path") in self.admin_paths
        try:
            bearer = _bearer(_header(scope, b"authorization"))
            if admin:
                self.store.check_admin(bearer, is_loopback((scope.get("client") or ("",))[0] or ""))
            else:
                policy = self.store.authenticate(bearer)
                self.store.check_spend(policy, SPEND_RECHECK_S)  # early; reserve holds the limit
                state["remaining_requests"] = self.store.check_rate(policy)
        except ClientError as exc:
            log.info("%s %s refused: %d %s", scope.get("method"), short_repr(scope.get("path")), exc.status, exc.code)
            await client_error_response(exc)(scope, receive, send)
            return
        if admin:
            await self.app(scope, receive, send)
            return
        state["key"] = policy

        async def send_with_limits(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *_limit_headers(policy, state)]}
            await send(message)

        await self.app(scope, receive, send_with_limits)


def _limit_headers(policy: KeyPolicy, state: dict) -> list[tuple[bytes, bytes]]:
    """OpenAI-style ``x-ratelimit-*`` headers of the key's limits and what is left of them."""
    headers = []
    if policy.requests_per_minute is not None and state.get("remaining_requests") is not None:
        headers += [
            (b"x-ratelimit-limit-requests", f"{policy.requests_per_minute:g}".encode()),
            (b"x-ratelimit-remaining-requests", str(state["remaining_requests"]).encode()),
        ]
    if policy.usd_per_day is not None and state.get("remaining_usd") is not None:
        headers += [
            (b"x-ratelimit-limit-usd", f"{policy.usd_per_day:g}".encode()),
            (b"x-ratelimit-remaining-usd", f"{max(0.0, state['remaining_usd']):.8f}".encode()),
        ]
    return headers


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# ---- the request body ----
def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: Request, max_depth: int = 32) -> dict:
    """The request's body as a JSON object, decoded strictly: UTF-8, JSON (no NaN/Infinity), an object at the
    top, at most ``max_depth`` levels deep. ``RequestError`` 400 names what is wrong.

    The body's size is ``BodyLimitMiddleware``'s to bound; the depth is checked before parsing, so a deeply
    nested body never reaches the recursive parser (measured with :func:`json_depth` only when the body holds more
    opening brackets than ``max_depth``).
    """
    data = await request.body()
    if not data.strip():
        raise RequestError(400, "request body: empty; expected a JSON object", "body", "invalid_json")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body: invalid UTF-8 at byte {exc.start}", "body", "invalid_utf8") from None
    brackets = data.count(b"[") + data.count(b"{")  # a bound on the depth, in C: most bodies need no more
    depth = json_depth(data) if brackets > max_depth else brackets
    if depth > max_depth:
        raise RequestError(
            400, f"request body: JSON nested {depth} levels deep, more than {max_depth}", "body", "invalid_json"
        )
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN, an integer of over 4,300 digits
        raise RequestError(
            400, f"request body: not JSON ({short_repr(str(exc), 200)})", "body", "invalid_json"
        ) from None
    if not isinstance(body, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(body), "a number")
        raise RequestError(400, f"request body: expected a JSON object, got {kind}", "body", "invalid_json")
    return body


# ---- where to listen ----
def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) or ``localhost``; any other name or address is not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_bind(host: str, store: KeyStore, allow_unauthenticated: bool) -> str | None:
    """A warning to print at start, or ``ValueError`` when ``host`` is reachable by others and no key protects it."""
    if not store.empty:
        return None
    if is_loopback(host):
        return f"no client keys configured: serving loopback only ({host})"
    if allow_unauthenticated:
        return (
            f"WARNING: serving {host} WITHOUT client keys (--allow-unauthenticated): anyone who can reach this port "
            "spends your LLM budget"
        )
    raise ValueError(
        f"host={host!r}: not a loopback address and no client keys are configured, so anyone who can reach it "
        f"would spend your LLM budget; configure keys (a keys file or ${ENV_VAR}) or allow it explicitly "
        "(allow_unauthenticated)"
    )
