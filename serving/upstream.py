"""The gateway's calls to the LLM endpoints: timeouts, retries, fallbacks, a circuit breaker per LLM, streaming.

One :class:`Upstreams` object (one aiohttp session) holds the whole policy, as LiteLLM's router does:
:meth:`Upstreams.call` takes the fallback order the router chose and returns an :class:`UpstreamResult` with every
try recorded as an :class:`Attempt` (no bodies, no keys) for the decision log. One request, its timeouts and bounds,
which failures are retryable, ``Retry-After``, reading an answer and its cost are :mod:`openai_compat`'s, shared with
the collector; the fallbacks, the breakers and the relay of a stream are the gateway's own.

- **Per LLM**, in order: skipped while its breaker is open (an ``circuit_open`` attempt); else up to
  ``1 + retries`` tries on 429, 408, 5xx, timeouts, connection errors and 200 bodies that are not JSON or hold no
  answer (no ``choices[0].message``), all before the
  first byte reaches the client, with exponential backoff and jitter of at least the upstream's ``Retry-After``
  (a ``Retry-After`` above ``max_delay_s`` moves on to the next LLM at once). Any other 4xx ends the request
  (the request itself is bad: no fallback) with a generic message, never the upstream's body: 400, 413 and 422
  keep their status, the rest become 502.
- **Timeouts**, per LLM from its catalog row (:class:`Timeouts`): ``connect_s`` (the socket connect),
  ``first_byte_s`` (from a try's start to the response headers and, for a stream, its first chunk) and
  ``total_s``, a deadline over everything spent on that LLM: its tries, backoffs and the body or the whole
  stream. So a hanging upstream holds a client at most ``total_s`` per LLM (then the next one is tried).
- **Streams**: the result's ``stream`` yields the upstream's SSE bytes unchanged from the first chunk on. After
  that no fallback is possible; a stream that breaks (connection lost, the total deadline, or an SSE stream ending
  without ``data: [DONE]``) ends with one ``data: {"error": {...}}`` event. While it is relayed the result's
  ``usage`` is filled from the chunk that carries it, and the answering attempt's ``seconds`` (and ``error``, if it
  broke) are updated when it ends. Consume it to the end or ``await result.stream.aclose()``: that releases the
  connection.
- **Circuit breaker** per LLM: ``breaker_failures`` consecutive failed tries (the retryable kinds) open it for
  ``breaker_cooldown_s``; then one trial request is let through (half-open): success closes it, failure re-opens
  it. A non-retryable 4xx shows the endpoint is up and counts as a success.
- **Bounds on what comes back**: a ``Retry-After`` is read as a finite number of seconds capped at
  ``MAX_RETRY_AFTER_S`` (``inf``, ``nan``, ``1e300``, negative or garbage values are capped or ignored); a body
  larger than ``max_response_bytes`` (its Content-Length, or the bytes as they arrive) is a failed try
  (``ResponseTooLarge``), never read whole; a stream's event longer than ``max_event_bytes`` without its end ends
  the stream (``SSELineTooLong``); redirects are not followed (a 3xx is the endpoint's error: the prompt never goes
  to another origin).
- **Usage**: a stream always asks the endpoint for its usage (``stream_options.include_usage``), so an answer is
  charged what it cost; the usage chunk is dropped from what the client gets when it did not ask for it.
- **Keys**: read at call time from the environment variable the row names (``api_key_env``), sent as
  ``Authorization: Bearer``; errors name exception types and statuses only, so a key never reaches an
  :class:`Attempt`, a log line or an exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from openai_compat import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_RETRY_AFTER_S,
    EventTooLong,
    RequestFailed,
    SSEScanner,
    Timeouts,
    backoff_delay,
    bearer_headers,
    chat_url,
    has_answer,
    open_chat,
    parse_body,
    post_chat,
    realised_cost,
    retry_after_header,
)
from warehouse.catalog import KeyEnvPolicy

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_RETRY_AFTER_S",
    "Attempt",
    "Timeouts",
    "UpstreamResult",
    "Upstreams",
    "realised_cost",
    "retry_after_header",
]

log = logging.getLogger(__name__)

#: Non-retryable 4xx statuses that describe the client's request and are given back as they are; other 4xx
#: (404, 401, ...) are the gateway's configuration problem and become 502.
CLIENT_STATUSES = frozenset({400, 413, 422})


@dataclass
class Attempt:
    """One try, as the decision log records it (no bodies, no keys).

    ``error``: None for an answer; else e.g. ``"HTTP 429"``, ``"Timeout(connect)"``, ``"Timeout(first_byte)"``,
    ``"Timeout(total)"``, ``"ClientConnectorError"``, ``"InvalidJSON"``, ``"circuit_open"``,
    ``"api_key_env NAME not set"``; for a stream that broke after its first byte, ``"mid_stream(<kind>)"``, or
    ``"client_disconnected"`` when the consumer closed it early. ``started_at`` is wall-clock (``time.time()``).
    """

    llm: str
    try_number: int
    status: int | None
    error: str | None
    started_at: float
    seconds: float
    retry_after_s: float | None = None


@dataclass
class UpstreamResult:
    """What :meth:`Upstreams.call` got.

    ``llm``: the LLM that answered (None: all failed; then ``status`` is the one to give the client: 429, 502,
    503 (every LLM's breaker open), 504 (timed out), or the request's own 400/413/422, and ``error`` a generic
    message for it). ``payload``: the upstream's JSON (non-streaming successes only). ``stream``: the SSE bytes.
    ``usage``: ``prompt_tokens``/``completion_tokens`` when known (a stream's once it has been relayed).
    """

    llm: str | None
    attempts: list[Attempt]
    status: int
    payload: dict | None = None
    stream: AsyncIterator[bytes] | None = None
    usage: dict | None = None
    error: str | None = None
    #: The ``Retry-After`` (seconds) to give the client with a 429.
    retry_after_s: float | None = None
    #: An LLM refused the request itself (a non-retryable 4xx): sending it again gets the same refusal.
    final: bool = False

    @property
    def tried(self) -> list[str]:
        """The LLMs asked, in order (the choice, then its fallbacks), each once."""
        return list(dict.fromkeys(a.llm for a in self.attempts))


@dataclass
class _Breaker:
    failures: int = 0  # consecutive failed tries
    opened_at: float | None = None  # monotonic; None: closed
    trial: bool = False  # half-open: the one trial request is in flight


@dataclass
class _Failure:
    """Why an LLM gave no answer: the client's status, a generic message, and whether to stop falling back."""

    status: int
    message: str
    final: bool = False
    retry_after_s: float | None = None


class Upstreams:
    """The upstream policy of one gateway process: one HTTP session, the retry/fallback loop, the breakers."""

    def __init__(
        self,
        retries: int = 2,
        base_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 30.0,
        connector_limit: int = 256,
        seed: int | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries: {retries!r} is negative")
        if base_delay_s < 0 or max_delay_s < 0:
            raise ValueError(f"base_delay_s={base_delay_s!r}, max_delay_s={max_delay_s!r}: delays are not negative")
        if breaker_failures < 1:
            raise ValueError(f"breaker_failures: {breaker_failures!r} is not at least 1")
        if breaker_cooldown_s < 0:
            raise ValueError(f"breaker_cooldown_s: {breaker_cooldown_s!r} is negative")
        if max_response_bytes < 1 or max_event_bytes < 1:
            raise ValueError(
                f"max_response_bytes={max_response_bytes!r}, max_event_bytes={max_event_bytes!r}: each must be >= 1"
            )
        self.max_response_bytes = max_response_bytes
        self.max_event_bytes = max_event_bytes
        self.retries = retries
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.connector_limit = connector_limit
        self._rng = random.Random(seed)
        self._breakers: dict[str, _Breaker] = {}
        self._session: aiohttp.ClientSession | None = None

    # ---- lifecycle ----
    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.connector_limit, limit_per_host=0)
            # no session-wide timeout: each try sets its own (connect) and runs under its deadlines
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Upstreams:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- circuit breaker ----
    def available(self, llm: str) -> bool:
        """False while ``llm``'s breaker is open (cooling down), or half-open with its trial request in flight."""
        breaker = self._breakers.get(llm)
        if breaker is None or breaker.opened_at is None:
            return True
        return not breaker.trial and time.monotonic() - breaker.opened_at >= self.breaker_cooldown_s

    def cooldown_left(self, llm: str) -> float:
        """Seconds until ``llm``'s open breaker lets a trial through (0.0 when closed)."""
        breaker = self._breakers.get(llm)
        if breaker is None or breaker.opened_at is None:
            return 0.0
        return max(0.0, self.breaker_cooldown_s - (time.monotonic() - breaker.opened_at))

    def _acquire(self, llm: str) -> bool:
        """May a try go to ``llm`` now? Claims the trial of a half-open breaker."""
        if not self.available(llm):
            return False
        breaker = self._breakers.setdefault(llm, _Breaker())
        if breaker.opened_at is not None:
            breaker.trial = True
        return True

    def _succeeded(self, llm: str) -> None:
        breaker = self._breakers.setdefault(llm, _Breaker())
        if breaker.opened_at is not None:
            log.info("llm %s: circuit closed", llm)
        breaker.failures, breaker.opened_at, breaker.trial = 0, None, False

    def _failed(self, llm: str) -> None:
        breaker = self._breakers.setdefault(llm, _Breaker())
        breaker.failures += 1
        if breaker.opened_at is not None or breaker.failures >= self.breaker_failures:
            if breaker.opened_at is None:
                log.warning(
                    "llm %s: circuit open for %.1f s after %d failures", llm, self.breaker_cooldown_s, breaker.failures
                )
            breaker.opened_at, breaker.trial = time.monotonic(), False

    def _released(self, llm: str) -> None:
        """A try that said nothing about the endpoint (cancelled): give the trial back."""
        breaker = self._breakers.get(llm)
        if breaker is not None:
            breaker.trial = False

    # ---- calls ----
    async def call(self, order: list[tuple[str, dict]], body: dict, stream: bool) -> UpstreamResult:
        """Ask the LLMs of ``order`` (name, catalog row) in turn until one answers; see the module's docstring."""
        if self._session is None:
            raise RuntimeError("Upstreams: not started; await start() first")
        attempts: list[Attempt] = []
        last = _Failure(502, "no LLM to ask")
        for llm, row in order:
            outcome = await self._call_llm(llm, row, body, stream, attempts)
            if isinstance(outcome, UpstreamResult):
                return outcome
            last = outcome
            if outcome.final:
                break
        if attempts and all(a.error == "circuit_open" for a in attempts):
            wait = min(self.cooldown_left(llm) for llm, _ in order)
            last = _Failure(
                503, "every LLM asked is cooling down after repeated failures; try again later", False, wait
            )
        return UpstreamResult(
            llm=None,
            attempts=attempts,
            status=last.status,
            error=last.message,
            retry_after_s=last.retry_after_s,
            final=last.final,
        )

    def _delay(self, try_number: int, retry_after_s: float | None) -> float | None:
        """Backoff before the next try: exponential with jitter, at least ``Retry-After``; None: do not wait (a
        ``Retry-After`` above ``max_delay_s``: the next LLM instead)."""
        if retry_after_s is not None and retry_after_s > self.max_delay_s:
            return None
        return backoff_delay(try_number, retry_after_s, self.base_delay_s, self.max_delay_s, self._rng)

    async def _call_llm(
        self, llm: str, row: dict, body: dict, stream: bool, attempts: list[Attempt]
    ) -> UpstreamResult | _Failure:
        timeouts = Timeouts.of(row)
        key_env = row.get("api_key_env")
        if key_env and not KeyEnvPolicy.from_environ().allows(key_env):  # a row that bypassed the catalog's check
            attempts.append(Attempt(llm, 1, None, f"api_key_env {key_env} not allowed", time.time(), 0.0))
            log.error("llm %s: api_key_env %s is not an allowed key variable", llm, key_env)
            return _Failure(502, f"llm {llm!r}: not configured")
        try:
            headers = bearer_headers(key_env)
        except RequestFailed as exc:
            attempts.append(Attempt(llm, 1, None, exc.kind, time.time(), 0.0))
            log.error("llm %s: api_key_env %s is not set", llm, key_env)
            return _Failure(502, f"llm {llm!r}: not configured")
        url = chat_url(row["base_url"])
        sent = {**body, "model": row["model_id"]}
        client_usage = False
        if stream:
            sent["stream"] = True
            options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            client_usage = options.get("include_usage") is True
            sent["stream_options"] = {**options, "include_usage": True}  # charged what it cost, always
        elif "stream" in sent:
            sent["stream"] = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total_s
        failure = _Failure(502, f"llm {llm!r}: no answer")
        for try_number in range(1, self.retries + 2):
            if not self._acquire(llm):
                attempts.append(Attempt(llm, try_number, None, "circuit_open", time.time(), 0.0))
                if try_number > 1:  # opened by this request's own failures: report those
                    return failure
                return _Failure(503, f"llm {llm!r}: cooling down after repeated failures")
            attempt = Attempt(llm, try_number, None, None, time.time(), 0.0)
            attempts.append(attempt)
            began = loop.time()
            retry_after_s = None
            try:
                result = await self._try(
                    llm, url, sent, headers, (stream, client_usage), timeouts, deadline, attempt, attempts
                )
            except RequestFailed as exc:
                attempt.status, attempt.error, attempt.retry_after_s = exc.status, exc.label, exc.retry_after_s
                attempt.seconds = loop.time() - began
                if not exc.retryable:  # the request is bad
                    self._succeeded(llm)  # the endpoint is up
                    log.warning("llm %s try %d: %s (not retried)", llm, try_number, exc.label)
                    status = exc.status if exc.status in CLIENT_STATUSES else 502
                    return _Failure(status, f"llm {llm!r} refused the request (HTTP {exc.status})", final=True)
                self._failed(llm)
                retry_after_s = exc.retry_after_s
                log.warning("llm %s try %d: %s", llm, try_number, exc.label)
                failure = _Failure(
                    429 if exc.status == 429 else 504 if exc.kind == "Timeout" else 502,
                    f"llm {llm!r}: " + ("rate limited" if exc.status == 429 else f"no answer ({exc.label})"),
                    retry_after_s=exc.retry_after_s,
                )
            except BaseException:  # cancelled (the client left): the endpoint is not to blame
                attempt.seconds, attempt.error = loop.time() - began, attempt.error or "cancelled"
                self._released(llm)
                raise
            else:
                attempt.seconds = loop.time() - began
                self._succeeded(llm)
                return result
            if try_number > self.retries:
                break
            delay = self._delay(try_number, retry_after_s)
            if delay is None or loop.time() + delay >= deadline:
                break  # Retry-After beyond the cap, or past this LLM's deadline: the next LLM instead
            await asyncio.sleep(delay)
            if loop.time() >= deadline:
                break
        return failure

    async def _try(
        self,
        llm: str,
        url: str,
        sent: dict,
        headers: dict,
        streaming: tuple[bool, bool],
        timeouts: Timeouts,
        deadline: float,
        attempt: Attempt,
        attempts: list[Attempt],
    ) -> UpstreamResult:
        """One try (``streaming``: whether to stream, and whether the client asked for the usage chunk); raises
        :class:`openai_compat.RequestFailed` for anything but an answer."""
        stream, client_usage = streaming
        limit = self.max_response_bytes
        if not stream:
            raw = await post_chat(self._session, url, sent, headers, timeouts, deadline, limit)
            attempt.status = 200
            payload = parse_body(raw)
            if not isinstance(payload, dict):
                raise RequestFailed("InvalidJSON")
            if not has_answer(payload):  # a 200 with no answer in it is the endpoint's fault: try again
                raise RequestFailed("MalformedBody")
            usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
            return UpstreamResult(llm=llm, attempts=attempts, status=200, payload=payload, usage=usage)
        began = asyncio.get_running_loop().time()
        response, first = await open_chat(self._session, url, sent, headers, timeouts, deadline, limit, stream=True)
        attempt.status = 200
        result = UpstreamResult(llm=llm, attempts=attempts, status=200)
        scanner = SSEScanner(self.max_event_bytes, drop_usage=not client_usage)
        relay = self._relay(llm, response, first, result, attempt, (began, deadline), scanner)
        result.stream = _Stream(relay, response, attempt)
        return result

    async def _relay(
        self,
        llm: str,
        response: aiohttp.ClientResponse,
        first: bytes,
        result: UpstreamResult,
        attempt: Attempt,
        window: tuple[float, float],
        scanner: SSEScanner,
    ) -> AsyncIterator[bytes]:
        """The upstream's events as they complete (``window``: the try's start and deadline); one error event if
        the stream breaks, grows past ``max_response_bytes`` or holds an event longer than ``max_event_bytes``."""
        loop = asyncio.get_running_loop()
        began, deadline = window
        sse = response.content_type == "text/event-stream"
        error: str | None = None
        finished = False
        received, chunk = 0, first
        try:
            while True:
                received += len(chunk)
                if received > self.max_response_bytes:
                    error = "ResponseTooLarge"
                    break
                try:
                    out = scanner.feed(chunk) if sse else chunk
                except EventTooLong:
                    error = "SSELineTooLong"
                    break
                if out:
                    yield out
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await response.content.readany()
                except TimeoutError:
                    error = "Timeout(total)"
                    break
                except aiohttp.ClientError as exc:
                    error = type(exc).__name__
                    break
                if not chunk:
                    tail = scanner.flush() if sse else b""  # a last event without its blank line
                    if tail:
                        yield tail
                    if sse and not scanner.done:
                        error = "NoDone"
                    break
            result.usage = scanner.usage
            if error is not None:
                attempt.error = f"mid_stream({error})"
                self._failed(llm)
                log.warning("llm %s: stream broke after its first byte: %s", llm, error)
                event = {
                    "error": {
                        "message": f"llm {llm!r}: the stream broke ({error})",
                        "type": "upstream_error",
                        "param": None,
                        "code": "stream_interrupted",
                    }
                }
                finished = True
                yield b"data: " + json.dumps(event).encode() + b"\n\n"
            finished = True
        finally:
            if not finished:
                attempt.error = attempt.error or "client_disconnected"
            result.usage = scanner.usage
            attempt.seconds = loop.time() - began
            if error is None and finished:
                response.release()
            else:
                response.close()


class _Stream:
    """The relayed stream: an async iterator of bytes whose ``aclose()`` frees the connection even when it was
    never iterated (closing an async generator that never started runs none of its cleanup)."""

    def __init__(self, relay: AsyncIterator[bytes], response: aiohttp.ClientResponse, attempt: Attempt) -> None:
        self._relay, self._response, self._attempt = relay, response, attempt
        self._started = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        return await self._relay.__anext__()

    async def aclose(self) -> None:
        await self._relay.aclose()
        if not self._started:
            self._attempt.error = self._attempt.error or "client_disconnected"
        self._response.close()  # a no-op once released
