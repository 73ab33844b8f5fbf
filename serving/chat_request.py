"""A client's ``POST /v1/chat/completions`` body, checked field by field before anything is routed or paid for.

Only OpenAI's chat fields the gateway can honour pass, each with its type checked; UniRoute's routing fields
(``cost_weight``, ``max_cost_per_query``, ``min_accuracy``, ``candidates``) are taken out and never forwarded.
Every refusal names the field and the value (:class:`ChatRequestError`, a 400 in OpenAI's error shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUDGETS", "ROUTED_MODEL", "ChatRequest", "ChatRequestError", "Limits", "parse_chat_request"]

ROUTED_MODEL = "uniroute"


class ChatRequestError(ValueError):
    """A bad request body; ``param`` names the field (OpenAI's ``error.param``)."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 16_384
    max_messages: int = 256
    max_candidates: int = 64


@dataclass
class ChatRequest:
    """A checked request: what to route on, how, and the body to forward (routing fields removed)."""

    model: str
    prompt: str | None  # the last user message's text: what the router embeds
    stream: bool
    forward: dict[str, Any]
    cost_weight: float | None = None
    max_cost_per_query: float | None = None
    min_accuracy: float | None = None
    candidates: list[str] | None = None
    budget: tuple[str, float] | None = field(default=None)  # (kind, value) as asked, for the decision log

    @property
    def routed(self) -> bool:
        return self.model == ROUTED_MODEL


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (values from clients can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(ok: bool, param: str, value: object, expected: str) -> None:
    if not ok:
        raise ChatRequestError(param, f"{param}={short_repr(value)}: expected {expected}")


#: OpenAI chat fields forwarded as they are, with the check each value must pass.
_FORWARDED: dict[str, tuple[Any, str]] = {
    "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number in [0, 2]"),
    "top_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "presence_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]"),
    "frequency_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "stop": (
        lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)),
        "a string or a list of up to 4 strings",
    ),
    "user": (lambda v: isinstance(v, str) and len(v) <= 256, "a string of at most 256 characters"),
    "response_format": (lambda v: isinstance(v, dict) and isinstance(v.get("type"), str), "an object with a type"),
    "logprobs": (lambda v: isinstance(v, bool), "true or false"),
    "top_logprobs": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 20, "an integer 0-20"),
    "tools": (lambda v: isinstance(v, list) and len(v) <= 128 and all(isinstance(t, dict) for t in v), "a list"),
    "tool_choice": (lambda v: isinstance(v, str | dict), "a string or an object"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "true or false"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
}
#: UniRoute's budget fields (a request, or a client key's policy, gives one at most) and each value's check.
BUDGETS: dict[str, tuple[Any, str]] = {
    "cost_weight": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "max_cost_per_query": (lambda v: _is_number(v) and v > 0, "a finite number > 0 (USD)"),
    "min_accuracy": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
}
_ROUTING = (*BUDGETS, "candidates")


def _encodable(text: str, param: str) -> str:
    """``text``, when it can be sent as UTF-8; a lone surrogate (``"\\ud800"``, which JSON lets through) cannot."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            message = f"{param}: character {exc.start} ({text[exc.start]!r}) is a lone surrogate, not text"
            raise ChatRequestError(param, message, "invalid_encoding") from None
    return text


def _message_text(content: object, param: str) -> str:
    if isinstance(content, str):
        return _encodable(content, param)
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            _check(
                isinstance(part, dict) and isinstance(part.get("type"), str), f"{param}[{i}]", part, "a content part"
            )
            if part["type"] == "text":
                _check(isinstance(part.get("text"), str), f"{param}[{i}].text", part.get("text"), "a string")
                texts.append(_encodable(part["text"], f"{param}[{i}].text"))
        return "".join(texts)
    _check(content is None, param, content, "a string or a list of content parts")
    return ""


def _messages(value: object, limits: Limits) -> str | None:
    """Checks ``messages``; returns the last user message's text (None if there is none with text)."""
    _check(isinstance(value, list) and len(value) > 0, "messages", value, "a non-empty list of messages")
    _check(len(value) <= limits.max_messages, "messages", f"{len(value)} messages", f"at most {limits.max_messages}")
    last_user = None
    for i, message in enumerate(value):
        _check(isinstance(message, dict), f"messages[{i}]", message, "an object")
        role = message.get("role")
        _check(role in ("system", "developer", "user", "assistant", "tool"), f"messages[{i}].role", role, "a role")
        text = _message_text(message.get("content"), f"messages[{i}].content")
        if role == "user":
            last_user = text
    return last_user if last_user and last_user.strip() else None


def parse_chat_request(body: object, limits: Limits | None = None) -> ChatRequest:
    """Check a decoded request body; raise :class:`ChatRequestError` naming the first bad field and value."""
    limits = limits or Limits()
    _check(isinstance(body, dict), "body", type(body).__name__, "a JSON object")
    model = body.get("model")
    _check(isinstance(model, str) and 0 < len(model) <= 256, "model", model, "a model name (a string)")
    prompt = _messages(body.get("messages"), limits)
    stream = body.get("stream", False)
    _check(isinstance(stream, bool), "stream", stream, "true or false (a JSON boolean)")
    n = body.get("n", 1)
    _check(n == 1 and isinstance(n, int) and not isinstance(n, bool), "n", n, "1 (one answer per request)")
    forward: dict[str, Any] = {"model": model, "messages": body["messages"], "stream": stream}
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := body.get(name)) is not None:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limits.max_tokens
            _check(ok, name, value, f"an integer in [1, {limits.max_tokens}]")
            forward[name] = value
    unknown = sorted(
        set(body) - {*_FORWARDED, *_ROUTING, "model", "messages", "stream", "n", "max_tokens", "max_completion_tokens"}
    )
    if unknown:
        raise ChatRequestError(
            unknown[0], f"{unknown[0]}: unknown field (not forwarded by the gateway)", "unknown_field"
        )
    for name, (ok, expected) in _FORWARDED.items():
        if name in body:
            _check(ok(body[name]), name, body[name], expected)
            forward[name] = body[name]
    request = ChatRequest(model=model, prompt=prompt, stream=stream, forward=forward)
    _routing_fields(body, request, limits)
    return request


def _routing_fields(body: dict, request: ChatRequest, limits: Limits) -> None:
    asked = {k: body[k] for k in _ROUTING if body.get(k) is not None}
    if asked and not request.routed:
        name = next(iter(asked))
        raise ChatRequestError(
            name, f"{name}: applies to model={ROUTED_MODEL!r} only; model={request.model!r} is not routed", "not_routed"
        )
    if not request.routed:
        return
    _check(request.prompt is not None, "messages", "no user text", "a user message with text to route on")
    for name, (ok, expected) in BUDGETS.items():
        if name in asked:
            _check(ok(asked[name]), name, asked[name], expected)
            setattr(request, name, float(asked[name]))
            request.budget = (name, float(asked[name]))
    if len([k for k in asked if k != "candidates"]) > 1:
        raise ChatRequestError(
            "cost_weight", "give one of cost_weight, max_cost_per_query, min_accuracy", "conflicting_budgets"
        )
    if "candidates" in asked:
        value = asked["candidates"]
        ok = isinstance(value, list) and 0 < len(value) <= limits.max_candidates
        _check(ok and all(isinstance(c, str) for c in value), "candidates", value, "a non-empty list of LLM names")
        _check(len(set(value)) == len(value), "candidates", value, "names without duplicates")
        request.candidates = list(value)
