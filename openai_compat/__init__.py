"""One client for OpenAI-compatible endpoints, shared by the collector (``profiling``) and the gateway
(``serving``): a request with timeouts and bounds (:mod:`~openai_compat.transport`), when a failure is worth
another try and how long to wait (:mod:`~openai_compat.retry`), reading an answer, its usage and its cost
(:mod:`~openai_compat.answers`), and a stream's events (:mod:`~openai_compat.sse`).

What each caller does with a failure stays its own: the collector retries a pair later, the gateway falls back to
the next LLM before the first byte, behind a circuit breaker. Imports nothing of this project's.
"""

from openai_compat.answers import (
    MAX_BODY_DEPTH,
    MAX_TOKENS,
    answer_text,
    cost_usd,
    first_choice,
    has_answer,
    json_depth,
    parse_body,
    realised_cost,
    token_count,
)
from openai_compat.retry import (
    MAX_RETRY_AFTER_S,
    RETRYABLE_STATUSES,
    backoff_delay,
    parse_retry_after,
    retry_after_header,
)
from openai_compat.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLong, SSEScanner
from openai_compat.transport import (
    DEFAULT_MAX_RESPONSE_BYTES,
    RequestFailed,
    Timeouts,
    bearer_headers,
    chat_url,
    open_chat,
    post_chat,
    read_capped,
    release,
    transport_errors,
)

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_BODY_DEPTH",
    "MAX_RETRY_AFTER_S",
    "MAX_TOKENS",
    "RETRYABLE_STATUSES",
    "EventTooLong",
    "RequestFailed",
    "SSEScanner",
    "Timeouts",
    "answer_text",
    "backoff_delay",
    "bearer_headers",
    "chat_url",
    "cost_usd",
    "first_choice",
    "has_answer",
    "json_depth",
    "open_chat",
    "parse_body",
    "parse_retry_after",
    "post_chat",
    "read_capped",
    "realised_cost",
    "release",
    "retry_after_header",
    "token_count",
    "transport_errors",
]
