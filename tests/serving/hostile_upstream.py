"""An OpenAI-compatible upstream on 127.0.0.1 that misbehaves on demand, for the gateway's bounds on what comes
back: ``Retry-After: inf`` or ``1e300``, a huge body (streamed, never allocated), an SSE line that never ends,
a redirect to another origin. ``server.mode = "..."`` picks what the next requests get; every request is counted.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from aiohttp import web

CHUNK = b" " * 65_536


class HostileUpstream:
    """``with HostileUpstream() as server:`` serves ``server.base_url`` (``.../v1``) until the block ends.

    Modes: ``ok`` (a small answer, plain or streamed), ``retry_after:<value>`` (429 with that header),
    ``huge_body`` (a 200 sending ``huge_bytes`` with no Content-Length), ``huge_length`` (a 200 whose
    Content-Length says ``huge_bytes``), ``endless_line`` (a 200 event stream whose first line never ends, up to
    ``huge_bytes``), ``redirect:<status>:<url>`` (that 3xx to ``url``). ``sent`` counts the body bytes each
    answer wrote; ``requests`` holds every request's body (or method and path, off the chat route).
    """

    def __init__(self, mode: str = "ok", huge_bytes: int = 64 * 2**20) -> None:
        self.mode, self.huge_bytes = mode, huge_bytes
        self.requests: list[dict] = []
        self.sent: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> HostileUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_route("*", "/{tail:.*}", self._elsewhere)  # a redirected request, whatever its method
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        mode, _, arg = self.mode.partition(":")
        if mode == "retry_after":
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": arg})
        if mode == "redirect":
            status, _, url = arg.partition(":")
            return web.Response(status=int(status), headers={"Location": f"{url}/chat/completions"})
        if mode in ("huge_body", "huge_length", "endless_line"):
            return await self._flood(request, mode)
        return await self._answer(request, body)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.requests.append({"method": request.method, "path": request.path})
        return web.Response(status=404)

    async def _flood(self, request: web.Request, mode: str) -> web.StreamResponse:
        kind = "text/event-stream" if mode == "endless_line" else "application/json"
        response = web.StreamResponse(headers={"Content-Type": kind})
        if mode == "huge_length":
            response.content_length = self.huge_bytes
        await response.prepare(request)
        sent = 0
        try:
            if mode == "endless_line":
                await response.write(b"data: ")
            while sent < self.huge_bytes:
                await response.write(CHUNK)
                sent += len(CHUNK)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the gateway hung up: what it should do
        finally:
            self.sent.append(sent)
        return response

    async def _answer(self, request: web.Request, body: dict) -> web.StreamResponse:
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "fine"}
            payload = {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"]}
            return web.json_response({**payload, "choices": [{"index": 0, "message": message}], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "x", "object": "chat.completion.chunk", "model": body["model"]}
        await response.write(b"data: " + json.dumps({**chunk, "choices": [{"delta": {"content": "ok"}}]}).encode())
        await response.write(b"\n\ndata: " + json.dumps({**chunk, "choices": [], "usage": usage}).encode())
        await response.write(b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response
