"""openai_compat.retry: which failures are retried, ``Retry-After`` bounded, backoff with jitter."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from openai_compat import RETRYABLE_STATUSES, backoff_delay, parse_retry_after, retry_after_header


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), ("inf", 60.0), ("1e300", 60.0), ("-5", 0.0), ("nan", None), ("soon", None), ("9" * 400, None)],
)
def test_retry_after_is_finite_and_capped(value, seconds):
    assert parse_retry_after(value) == seconds
    assert retry_after_header(parse_retry_after(value)) in {str(n) for n in range(1, 61)}


def test_an_http_date_retry_after_is_seconds_from_now():
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= parse_retry_after(in_ten) <= 10.0
    assert parse_retry_after(email.utils.formatdate(time.time() - 100, usegmt=True)) == 0.0


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 501, 502, 503, 504, 599])
def test_the_upstreams_trouble_is_retryable(status):
    assert status in RETRYABLE_STATUSES


@pytest.mark.parametrize("status", [200, 302, 400, 401, 403, 404, 413, 422])
def test_the_requests_own_fault_is_not_retryable(status):
    assert status not in RETRYABLE_STATUSES


def test_backoff_grows_with_jitter_within_its_cap_and_waits_at_least_the_retry_after():
    rng = random.Random(0)
    first = [backoff_delay(1, None, 0.1, 5.0, rng) for _ in range(200)]
    assert 0.05 <= min(first) < 0.07 and 0.13 < max(first) <= 0.15  # x0.5 to x1.5 of the base
    assert all(backoff_delay(30, None, 0.1, 5.0, rng) <= 5.0 for _ in range(50))  # the cap holds with the jitter
    assert backoff_delay(1, 3.0, 0.1, 5.0, rng) == 3.0
    assert backoff_delay(1, 60.0, 0.1, 5.0, rng) == 5.0  # a Retry-After past the cap waits the cap
