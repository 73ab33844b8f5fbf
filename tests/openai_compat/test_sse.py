"""openai_compat.sse: whole events, the usage chunk, ``[DONE]``, and the bound on one event."""

from __future__ import annotations

import pytest

from openai_compat import EventTooLong, SSEScanner

TEXT = b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\n'
USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'


@pytest.mark.parametrize("drop_usage", [False, True])
def test_events_are_relayed_whole_and_the_usage_is_noted(drop_usage):
    scanner = SSEScanner(drop_usage=drop_usage)
    stream = TEXT + USAGE + b"data: [DONE]\n\n"
    out = b"".join(scanner.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + scanner.flush()
    assert out == (TEXT + b"data: [DONE]\n\n" if drop_usage else stream)
    assert scanner.usage == {"prompt_tokens": 3, "completion_tokens": 1} and scanner.done


def test_an_event_longer_than_the_bound_raises():
    scanner = SSEScanner(max_event_bytes=1024)
    scanner.feed(b"data: " + b"x" * 1000)
    with pytest.raises(EventTooLong):
        scanner.feed(b"x" * 100)


def test_an_event_nested_past_the_parsers_depth_is_relayed_and_never_raises():
    """An upstream's deeply nested event (a RecursionError in the JSON parser before) goes through as it is."""
    deep = b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n"
    scanner = SSEScanner(drop_usage=True)
    assert scanner.feed(TEXT + deep + USAGE) == TEXT + deep
    assert scanner.usage == {"prompt_tokens": 3, "completion_tokens": 1}
