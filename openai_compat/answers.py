"""Reading a chat completion's body: its JSON, its answer (or that it has none), its token counts and its cost.

An endpoint's body may be anything: not JSON, JSON nested past the parser's recursion, ``choices`` missing or empty,
a ``usage`` of ``"n/a"`` or ``-1``. These functions never raise on what an endpoint sent: they say None.
"""

from __future__ import annotations

import functools
import json
import math

__all__ = [
    "MAX_BODY_DEPTH",
    "MAX_TOKENS",
    "answer_text",
    "cost_usd",
    "first_choice",
    "has_answer",
    "json_depth",
    "parse_body",
    "realised_cost",
    "token_count",
]

#: A token count taken from an endpoint (the warehouse stores it as INTEGER): 0 <= n < 2**31.
MAX_TOKENS = 2**31


#: How deep an endpoint's JSON may nest (a chat completion with logprobs is about 7 levels). Deeper bodies are refused
#: before the recursive parser sees them: near the interpreter's recursion limit even a finalizer the garbage
#: collector runs there fails.
MAX_BODY_DEPTH = 64


def parse_body(raw: bytes, max_depth: int = MAX_BODY_DEPTH) -> object | None:
    """The JSON of ``raw``, or None when it is not JSON (bad bytes, cut short) or nests deeper than ``max_depth``
    (measured by :func:`json_depth` only when ``raw`` holds more opening brackets than that: counted in C)."""
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw) > max_depth:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


@functools.cache
def _depth_step():
    import numpy as np  # only for bodies with many brackets: the command line's imports stay light

    step = np.zeros(256, np.int8)
    step[list(b"[{")] = 1
    step[list(b"]}")] = -1
    return step


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON ``data``; brackets inside strings do not count.

    Vectorised over the bytes (a few ms per MB): a quote opens or closes a string unless an odd run of
    backslashes precedes it. UTF-8 continuation bytes are never ASCII, so bytes are as good as characters here.
    """
    import numpy as np

    chars = np.frombuffer(data, np.uint8)
    step = _depth_step()[chars]
    if not step.any():
        return 0
    quote = chars == ord('"')
    if quote.any():
        position = np.arange(chars.size, dtype=np.int32)
        last_other = np.maximum.accumulate(np.where(chars == ord("\\"), -1, position))
        backslashes_before = np.zeros(chars.size, np.int32)
        backslashes_before[1:] = position[:-1] - last_other[:-1]
        in_string = np.cumsum(quote & (backslashes_before % 2 == 0)) % 2 == 1
        step = np.where(in_string, 0, step)
    return max(0, int(np.cumsum(step, dtype=np.int64).max()))


def first_choice(payload: object) -> dict | None:
    """``payload["choices"][0]`` when it is an object in a non-empty list, else None."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    return choices[0]


def answer_text(payload: object) -> str | None:
    """The first choice's text (``message.content`` when a string), else None: no choice, a refusal, tool calls,
    content that is a number or a list of parts."""
    message = (first_choice(payload) or {}).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def has_answer(payload: object) -> bool:
    """A chat completion with at least one choice holding a message (text, a refusal or tool calls)."""
    message = (first_choice(payload) or {}).get("message")
    return isinstance(message, dict) and (
        isinstance(message.get("content"), str) or bool(message.get("tool_calls")) or bool(message.get("refusal"))
    )


def token_count(usage: object, name: str) -> int | None:
    """``usage[name]`` if it is a whole number below :data:`MAX_TOKENS`, else None (``-1``, ``"n/a"``, ``1.5``, NaN,
    ``true``, missing, ``usage`` not an object)."""
    value = usage.get(name) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (0 <= value < MAX_TOKENS and value == int(value)):  # NaN and infinities fail the range
        return None
    return int(value)


def cost_usd(prompt_tokens: int, completion_tokens: int, usd_in: float, usd_out: float) -> float | None:
    """USD of an answer at per-million-token prices (``usd_in``, ``usd_out``); None when not finite or negative."""
    cost = (prompt_tokens * float(usd_in) + completion_tokens * float(usd_out)) / 1e6
    return cost if math.isfinite(cost) and cost >= 0 else None


def realised_cost(row: dict, usage: object) -> float | None:
    """USD of one answer: a catalog row's prices per million tokens times its ``usage``'s tokens, else the row's
    price per query; None when neither is known (per-token prices with unknown tokens, or no price)."""
    price_in, price_out = row.get("usd_per_mtok_in"), row.get("usd_per_mtok_out")
    if None in (price_in, price_out):
        per_query = row.get("usd_per_query")
        return None if per_query is None else float(per_query)
    prompt, completion = token_count(usage, "prompt_tokens"), token_count(usage, "completion_tokens")
    if prompt is None or completion is None:
        return None
    return cost_usd(prompt, completion, price_in, price_out)
