"""The OpenAI chat-completions wire format as the replay endpoint speaks it: a request parsed and checked (the first
bad field named), a JSON answer or error in OpenAI's shape, and an answer streamed as server-sent events (whole, cut
short, or with its connection dropped)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from profiling.rendering import estimate_tokens

__all__ = [
    "STREAM_PIECES",
    "BadRequest",
    "ChatRequest",
    "DroppedResponse",
    "SSEResponse",
    "error_response",
    "json_response",
    "message_text",
    "parse_chat_request",
    "stream_events",
    "wait_for_disconnect",
]


class BadRequest(Exception):
    """A malformed chat request; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    model: str
    prompt: str  # the last user message: what identifies the prompt
    prompt_tokens: int
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage


def message_text(content: Any, param: str) -> str:
    """The text of a message's ``content``: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise BadRequest(f"{param}[{i}]: expected a text part, got {part!r:.80}", f"{param}[{i}]")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{param}: expected a string or a list of text parts, got {content!r:.80}", param)


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body; raise ``BadRequest`` naming the first bad field."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", None) from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body: expected a JSON object, got {type(body).__name__}", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(f"model: expected a non-empty string, got {model!r:.80}", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"stream: expected a boolean, got {stream!r:.80}", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(f"stream_options: expected an object, got {options!r:.80}", "stream_options")
    include_usage = (options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        param = "stream_options.include_usage"
        raise BadRequest(f"{param}: expected a boolean, got {include_usage!r:.80}", param)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"messages: expected a non-empty list of messages, got {messages!r:.80}", "messages")
    texts, prompt = [], None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}]: expected an object, got {message!r:.80}", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"messages[{i}].role: expected a string, got {role!r:.80}", f"messages[{i}].role")
        text = message_text(message.get("content"), f"messages[{i}].content")
        texts.append(text)
        if role == "user":
            prompt = text
    if prompt is None:
        raise BadRequest("messages: no message with role 'user'", "messages")
    return ChatRequest(
        model=model,
        prompt=prompt,
        prompt_tokens=estimate_tokens("\n".join(texts)),
        stream=bool(stream),
        include_usage=bool(include_usage),
    )


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def error_response(
    status_code: int,
    message: str,
    error_type: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return json_response({"error": error}, status_code, headers)


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


#: How many content pieces a streamed answer is split into (fewer for answers shorter than that).
STREAM_PIECES = 8


def stream_events(
    model: str, answer: str, usage: dict[str, int] | None, delay_s: float = 0.0
) -> list[tuple[bytes, float]]:
    """The SSE events OpenAI streams for ``answer``, each with the delay before it (``delay_s`` before each content
    piece): the role, the content in pieces, the finish reason, the usage (when asked for; every other chunk then
    carries ``"usage": null``), ``[DONE]``."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = model
    extra = {"usage": None} if usage is not None else {}

    def chunk(delta: dict, finish_reason: str | None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice], **extra}

    size = max(1, -(-len(answer) // STREAM_PIECES))
    pieces = [chunk({"content": answer[i : i + size]}, None) for i in range(0, len(answer), size)]
    chunks = [(chunk({"role": "assistant", "content": ""}, None), 0.0), *((c, delay_s) for c in pieces)]
    chunks.append((chunk({}, "stop"), 0.0))
    if usage is not None:
        chunks.append(({**base, "choices": [], "usage": usage}, 0.0))
    events = [
        (b"data: " + json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n", d) for c, d in chunks
    ]
    return [*events, (b"data: [DONE]\n\n", 0.0)]


class SSEResponse:
    """A ``text/event-stream`` response sending ``events`` (each after its delay); ``drop``: close the connection
    after the last one instead of ending the response."""

    def __init__(self, events: list[tuple[bytes, float]], drop: bool = False) -> None:
        self.events, self.drop = events, drop

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event, delay_s in self.events:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if not self.drop:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # dropped: returning with the response unfinished makes uvicorn close the connection mid-body


class DroppedResponse:
    """A 200 JSON response whose connection closes after half of ``body`` (its Content-Length promises all)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
