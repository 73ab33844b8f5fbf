"""When a failed request is worth another try, and how long to wait first.

One rule for every caller of an OpenAI-compatible endpoint: the statuses that are the upstream's trouble rather than
the request's (:data:`RETRYABLE_STATUSES`), a ``Retry-After`` read as a bounded number of seconds
(:func:`parse_retry_after`), and exponential backoff with jitter of at least that (:func:`backoff_delay`).
"""

from __future__ import annotations

import email.utils
import math
import random
import time

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_STATUSES",
    "backoff_delay",
    "parse_retry_after",
    "retry_after_header",
]

#: Statuses worth another try (or another LLM): a timeout, a conflict, "too early", a rate limit, any 5xx.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
#: The longest ``Retry-After`` taken from an upstream or given to a client, in seconds.
MAX_RETRY_AFTER_S = 60.0


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number, or an HTTP date), at most :data:`MAX_RETRY_AFTER_S`; None when absent or
    not a time (``nan``, garbage). Infinite or huge values are capped, negative ones and past dates are 0."""
    if not value or len(value) > 64:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def retry_after_header(seconds: float | None) -> str:
    """A client's ``Retry-After`` value: whole seconds, at least 1, at most :data:`MAX_RETRY_AFTER_S`."""
    if seconds is None or math.isnan(seconds):
        seconds = 1.0
    return str(int(min(MAX_RETRY_AFTER_S, max(1.0, math.ceil(min(seconds, MAX_RETRY_AFTER_S))))))


def backoff_delay(
    attempt: int, retry_after_s: float | None, base_delay_s: float, max_delay_s: float, rng: random.Random
) -> float:
    """Seconds to wait after failed try number ``attempt`` (from 1): ``base_delay_s * 2**(attempt - 1)`` with jitter
    (x0.5 to x1.5), at most ``max_delay_s``, and at least the ``Retry-After`` (itself capped at ``max_delay_s``)."""
    backoff = min(max_delay_s, base_delay_s * 2 ** (attempt - 1) * rng.uniform(0.5, 1.5))
    return max(backoff, min(retry_after_s or 0.0, max_delay_s))
