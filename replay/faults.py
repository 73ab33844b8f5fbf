"""Fault injection of the replay endpoint: the kinds of failure, their rates, and their seeded draws.

A request draws at most one :class:`FaultKind` (429, 500, 503, a hang, a truncated body, a dropped connection, a
200 with malformed usage or no text answer) from :class:`FaultRates`, in the order requests arrive, with a seeded
generator (:class:`FaultDraws`), so a seeded run fails the same requests every time. :class:`ReplayConfig` is
everything that shapes the server's behaviour: latency, faults and their seed, substitutions and the judge.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replay.judge import JudgeConfig
    from replay.substitution import Substitution

__all__ = [
    "MALFORMED_BODIES",
    "MALFORMED_USAGES",
    "SPREAD_KINDS",
    "FaultDraws",
    "FaultKind",
    "FaultRates",
    "ReplayConfig",
    "malformed_body",
    "malformed_usage",
]


class FaultKind(StrEnum):
    """An injected failure; its value is the outcome recorded in the request log."""

    RATE_LIMITED = "rate_limited"  # 429 with Retry-After, sent at once (no latency)
    SERVER_ERROR = "server_error"  # 500 after the latency
    UNAVAILABLE = "unavailable"  # 503 after the latency
    HANG = "hang"  # nothing for hang_seconds (or until the client gives up), then 504
    TRUNCATED = "truncated"  # 200 whose JSON body is cut in half (a stream: half its events, no [DONE])
    MID_STREAM_DROP = "mid_stream_drop"  # 200, half the body (or the stream's events), then the connection closes
    MALFORMED_USAGE = "malformed_usage"  # 200 with the answer, its usage malformed (a stream: its usage chunk)
    MALFORMED_BODY = "malformed_body"  # 200 with valid JSON holding no text answer (a stream: chunks without choices)


#: The kinds :meth:`FaultRates.spread` spreads a total rate over.
SPREAD_KINDS = (
    FaultKind.RATE_LIMITED,
    FaultKind.SERVER_ERROR,
    FaultKind.UNAVAILABLE,
    FaultKind.HANG,
    FaultKind.TRUNCATED,
)


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault kind per valid request; the rest are answered (``OK``)."""

    rate_limited: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    hang: float = 0.0
    truncated: float = 0.0
    mid_stream_drop: float = 0.0
    malformed_usage: float = 0.0
    malformed_body: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            rate = getattr(self, f.name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {f.name}: {rate!r} is not in [0, 1]")
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"fault rates: they sum to {self.total!r}, more than 1")

    @classmethod
    def spread(cls, total_rate: float) -> FaultRates:
        """``total_rate`` split evenly over the kinds of :data:`SPREAD_KINDS` (``mid_stream_drop`` and the malformed
        kinds, added later, are left out so that a seeded spread draws what it always drew; set them by name)."""
        if not 0.0 <= total_rate <= 1.0:
            raise ValueError(f"fault_rate: {total_rate!r} is not in [0, 1]")
        return cls(**{kind.value: total_rate / len(SPREAD_KINDS) for kind in SPREAD_KINDS})

    @property
    def total(self) -> float:
        """Probability that a request gets any fault."""
        return sum(getattr(self, kind.value) for kind in FaultKind)

    def cumulative(self) -> list[tuple[float, FaultKind]]:
        """Upper bounds of each kind's slice of [0, 1), in ``FaultKind`` order, for one uniform draw."""
        bounds, upper = [], 0.0
        for kind in FaultKind:
            upper += getattr(self, kind.value)
            bounds.append((upper, kind))
        return bounds


@dataclass(frozen=True)
class ReplayConfig:
    """How the replay server behaves: latency, faults and their seeded draws, substitutions, the judge."""

    #: Delay before every answer (and before 500, 503 and truncated bodies), in milliseconds.
    latency_ms: float = 0.0
    #: Per-model overrides of ``latency_ms``.
    model_latency_ms: dict[str, float] = field(default_factory=dict)
    faults: FaultRates = field(default_factory=FaultRates)
    #: Seed of the fault draws (``None``: fresh entropy); draws follow the order requests arrive in.
    seed: int | None = 0
    #: How long a hang lasts when the client does not give up first; choose it above the client's timeout.
    hang_seconds: float = 30.0
    #: The ``Retry-After`` header of a 429, in seconds.
    retry_after_seconds: int = 1
    #: Delay before each content piece of a stream, in milliseconds (the first byte comes after ``latency_ms``).
    stream_chunk_delay_ms: float = 0.0
    #: Substitution rules in force at start (and after ``/_replay/reset``): see :mod:`replay.substitution`.
    substitutions: tuple[Substitution, ...] = ()
    #: The replay judge (:mod:`replay.judge`), served as one more model; None: no judge.
    judge: JudgeConfig | None = None

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms: {self.latency_ms!r} is negative")
        for model, ms in self.model_latency_ms.items():
            if ms < 0:
                raise ValueError(f"model_latency_ms[{model!r}]: {ms!r} is negative")
        if self.hang_seconds <= 0:
            raise ValueError(f"hang_seconds: {self.hang_seconds!r} is not positive")
        if self.retry_after_seconds < 0:
            raise ValueError(f"retry_after_seconds: {self.retry_after_seconds!r} is negative")
        if self.stream_chunk_delay_ms < 0:
            raise ValueError(f"stream_chunk_delay_ms: {self.stream_chunk_delay_ms!r} is negative")

    def latency_seconds(self, model: str) -> float:
        """The delay before ``model`` answers, in seconds."""
        return self.model_latency_ms.get(model, self.latency_ms) / 1000.0


class FaultDraws:
    """The seeded draws of one server: which fault a request gets, and which malformation a malformed one sends."""

    def __init__(self, rates: FaultRates, seed: int | None) -> None:
        self._bounds = rates.cumulative()
        self._any = rates.total > 0
        self._seed = seed
        self._rng = random.Random(seed)

    def reset(self) -> None:
        """Restart the draws from the seed."""
        self._rng = random.Random(self._seed)

    def fault(self) -> FaultKind | None:
        """The fault of the next request, or ``None``: answer it."""
        if not self._any:
            return None
        u = self._rng.random()
        for upper, kind in self._bounds:
            if u < upper:
                return kind
        return None

    def variant(self, fault: FaultKind | None) -> int:
        """Which malformation ``fault`` sends; drawn only for the malformed kinds, so that other seeded runs draw
        what they always drew."""
        return self._rng.randrange(1 << 30) if fault in (FaultKind.MALFORMED_USAGE, FaultKind.MALFORMED_BODY) else 0


#: What ``malformed_usage`` puts in place of the true counts (one drawn per answer).
MALFORMED_USAGES: tuple[Any, ...] = (
    {"prompt_tokens": -1},
    {"prompt_tokens": "n/a"},
    {"completion_tokens": -1},
    {"completion_tokens": "n/a"},
    {"prompt_tokens": 1.5},
    {"completion_tokens": 2**40},
    "n/a",
)
#: The bodies ``malformed_body`` sends: each parses as JSON, none holds a text answer (one drawn per answer).
MALFORMED_BODIES = ("no_choices", "empty_choices", "no_message", "null_content", "number_content")


def malformed_usage(usage: dict[str, int], draw: int) -> Any:
    variant = MALFORMED_USAGES[draw % len(MALFORMED_USAGES)]
    return {**usage, **variant} if isinstance(variant, dict) else variant


def malformed_body(payload: dict[str, Any], draw: int) -> dict[str, Any]:
    variant = MALFORMED_BODIES[draw % len(MALFORMED_BODIES)]
    choice = payload["choices"][0]
    if variant == "no_choices":
        del payload["choices"]
    elif variant == "empty_choices":
        payload["choices"] = []
    elif variant == "no_message":
        del choice["message"]
    else:
        choice["message"]["content"] = None if variant == "null_content" else 42
    return payload
