"""Server-sent events of a streamed chat completion, cut into whole events with a bound on each."""

from __future__ import annotations

from openai_compat.answers import parse_body

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "EventTooLong", "SSEScanner"]

DEFAULT_MAX_EVENT_BYTES = 2**20  # one server-sent event (a chunk of an answer)


class EventTooLong(Exception):
    """A server-sent event grew past the scanner's limit without its end."""


class SSEScanner:
    """Cuts SSE bytes into whole events as they complete: notes the ``usage`` of a chunk and the ``[DONE]`` event,
    drops the usage-only chunk when ``drop_usage``, and holds at most ``max_event_bytes`` of an unfinished event
    (:class:`EventTooLong` past it)."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, drop_usage: bool = False) -> None:
        self._buffer = b""
        self.max_event_bytes = max_event_bytes
        self.drop_usage = drop_usage
        self.usage: dict | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The events ``data`` completes, as bytes to relay (each ending with a blank line)."""
        self._buffer += data.replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        if len(self._buffer) > self.max_event_bytes:
            raise EventTooLong
        return b"".join(event + b"\n\n" for event in events if self._keep(event))

    def flush(self) -> bytes:
        """What is left at the stream's end (an event without its blank line)."""
        event, self._buffer = self._buffer, b""
        return event + b"\n\n" if event.strip() and self._keep(event) else b""

    def _keep(self, event: bytes) -> bool:
        keep = True
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            value = line[5:].strip()
            if value == b"[DONE]":
                self.done = True
                continue
            chunk = parse_body(value)  # None: not JSON, or nested too deep to parse safely (relayed as it is)
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                self.usage = chunk["usage"]
                keep = not (self.drop_usage and not chunk.get("choices"))
        return keep
