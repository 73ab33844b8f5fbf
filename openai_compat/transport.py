"""One request to an OpenAI-compatible ``/chat/completions``, with its timeouts and its bounds, on aiohttp.

:func:`open_chat` sends a request and waits for its answer to begin; :func:`post_chat` also reads the whole body
(non-streaming). Anything but a 200 is a :class:`RequestFailed` naming the failure by class only (``HTTP 503``,
``Timeout``, ``ClientConnectorError``, ``ResponseTooLarge``), never by message or body, so a key or a prompt never
reaches an error. Redirects are not followed (a 3xx is the endpoint's error: a prompt never goes to another origin),
and a body larger than ``max_response_bytes`` is never read whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from openai_compat.retry import RETRYABLE_STATUSES, parse_retry_after

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "RequestFailed",
    "Timeouts",
    "bearer_headers",
    "chat_url",
    "open_chat",
    "post_chat",
    "read_capped",
    "release",
    "transport_errors",
]

DEFAULT_MAX_RESPONSE_BYTES = 16 * 2**20  # an LLM's answer is kilobytes; 16 MB leaves room for long ones
_ERROR_BODY_BYTES = 65_536  # an error body drained (so the connection can be reused), at most
_ERROR_BODY_S = 1.0


@dataclass(frozen=True)
class Timeouts:
    """One LLM's timeouts, in seconds (catalog fields ``timeout_connect_s``, ``timeout_first_byte_s``,
    ``timeout_total_s``): the socket connect; from a try's start to the response headers (and, for a stream, its
    first chunk); and a deadline over everything."""

    connect_s: float = 5.0
    first_byte_s: float = 60.0
    total_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_byte_s", "total_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"timeout {name}: {value!r} is not a positive number of seconds")

    @classmethod
    def of(cls, row: dict) -> Timeouts:
        """The row's timeouts; a missing or null field takes the default."""
        defaults = cls()
        return cls(
            connect_s=_number(row.get("timeout_connect_s"), defaults.connect_s),
            first_byte_s=_number(row.get("timeout_first_byte_s"), defaults.first_byte_s),
            total_s=_number(row.get("timeout_total_s"), defaults.total_s),
        )

    @classmethod
    def overall(cls, seconds: float) -> Timeouts:
        """One limit for everything: connect, first byte and the whole request within ``seconds``."""
        return cls(connect_s=seconds, first_byte_s=seconds, total_s=seconds)


def _number(value: object, default: float) -> float:
    return default if value is None else float(value)


class RequestFailed(Exception):
    """A try that gave no answer. ``kind``: why, by class only (``HTTP 503``, ``Timeout``, ``ClientConnectorError``,
    ``ResponseTooLarge``, ``MalformedBody``); ``phase``: for a timeout, which one (``connect``, ``first_byte``,
    ``total``); ``retryable``: whether another try may answer (default: no status, or a retryable one)."""

    def __init__(
        self,
        kind: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        phase: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(kind)
        self.kind, self.status, self.retry_after_s, self.phase = kind, status, retry_after_s, phase
        self.retryable = (status is None or status in RETRYABLE_STATUSES) if retryable is None else retryable

    @property
    def label(self) -> str:
        """``kind`` with the timeout's phase: ``Timeout(first_byte)``."""
        return f"{self.kind}({self.phase})" if self.phase else self.kind


def chat_url(base_url: str) -> str:
    """The chat completions URL of an endpoint's ``base_url`` (``.../v1``)."""
    return str(base_url).rstrip("/") + "/chat/completions"


def bearer_headers(api_key_env: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` with the key in the environment variable ``api_key_env``, read now (none: no
    header); a variable not set is a :class:`RequestFailed` that is not retryable, naming the variable only."""
    if not api_key_env:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise RequestFailed(f"api_key_env {api_key_env} not set", retryable=False)
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def transport_errors(phase: str) -> Iterator[None]:
    """Timeouts and aiohttp's errors inside as :class:`RequestFailed` (a timeout in ``phase``, unless connecting)."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        raise RequestFailed("Timeout", phase="connect") from None
    except TimeoutError:
        raise RequestFailed("Timeout", phase=phase) from None
    except aiohttp.ClientError as exc:
        raise RequestFailed(type(exc).__name__) from None


async def open_chat(
    session: aiohttp.ClientSession,
    url: str,
    body: dict,
    headers: dict[str, str],
    timeouts: Timeouts,
    deadline: float,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    stream: bool = False,
) -> tuple[aiohttp.ClientResponse, bytes]:
    """POST ``body`` and wait for the answer to begin, by ``timeouts.first_byte_s`` and ``deadline`` (the event
    loop's clock): the 200 response and, for a ``stream``, its first chunk. The caller :func:`release`\\ s it.

    Raises :class:`RequestFailed`: another status (with its ``Retry-After``; a short error body is drained so the
    connection serves again), a Content-Length over ``max_response_bytes``, an empty stream, a timeout, a transport
    error. The response is released then."""
    loop = asyncio.get_running_loop()
    first_byte_at = min(loop.time() + timeouts.first_byte_s, deadline)
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s)
    response: aiohttp.ClientResponse | None = None
    try:
        with transport_errors("first_byte" if first_byte_at < deadline else "total"):
            async with asyncio.timeout_at(first_byte_at):
                response = await session.post(
                    url, json=body, headers=headers, timeout=client_timeout, allow_redirects=False
                )
                length = response.content_length
                if response.status == 200 and length is not None and length > max_response_bytes:
                    raise RequestFailed("ResponseTooLarge")
                first = await response.content.readany() if stream and response.status == 200 else b""
        if response.status != 200:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            with contextlib.suppress(Exception):
                async with asyncio.timeout_at(min(deadline, loop.time() + _ERROR_BODY_S)):
                    await read_capped(response, _ERROR_BODY_BYTES)
            raise RequestFailed(f"HTTP {response.status}", response.status, retry_after)
        if stream and not first:
            raise RequestFailed("EmptyStream")
        return response, first
    except BaseException:
        if response is not None:
            release(response)
        raise


async def post_chat(
    session: aiohttp.ClientSession,
    url: str,
    body: dict,
    headers: dict[str, str],
    timeouts: Timeouts,
    deadline: float | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> bytes:
    """One non-streaming request (:func:`open_chat`) and its whole body, read by ``deadline`` (default: the loop's
    time now plus ``timeouts.total_s``) and at most ``max_response_bytes``; else :class:`RequestFailed`."""
    if deadline is None:
        deadline = asyncio.get_running_loop().time() + timeouts.total_s
    response, _ = await open_chat(session, url, body, headers, timeouts, deadline, max_response_bytes)
    try:
        with transport_errors("total"):
            async with asyncio.timeout_at(deadline):
                return await read_capped(response, max_response_bytes)
    finally:
        release(response)


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, at most ``limit`` bytes read (``ResponseTooLarge`` past it: the rest is never read)."""
    parts, size = [], 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > limit:
            raise RequestFailed("ResponseTooLarge")
        parts.append(chunk)
    return b"".join(parts)


def release(response: aiohttp.ClientResponse) -> None:
    """Give a response's connection back: to the pool when read to its end, else closed."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()
