"""An onboarding budget in USD per LLM, held by the collector: each pair's worst case is reserved before it is asked
and settled with what the answer cost after, so the requests in flight can never together pass the budget.

A pair that does not fit waits for the answers in flight to settle; once none is in flight and it still does not fit,
the LLM's collection stops there and its remaining pairs are not asked (they stay pending for a later run).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from openai_compat import cost_usd
from profiling.rendering import estimate_tokens

__all__ = ["DEFAULT_COMPLETION_TOKENS", "SpendLimit", "request_tokens", "worst_case_usd"]

#: Completion tokens a request that sets no ``max_tokens`` is assumed to use at most (its dataset's spec can set
#: ``max_tokens``, which then bounds it for real).
DEFAULT_COMPLETION_TOKENS = 512


def request_tokens(messages: Sequence[dict], params: Mapping) -> tuple[int, int]:
    """A request's token estimate: its messages' text (``profiling.rendering.estimate_tokens``, as the collector
    estimates a count an endpoint leaves out) and its ``max_tokens`` (else :data:`DEFAULT_COMPLETION_TOKENS`)."""
    prompt = estimate_tokens("\n".join(str(m.get("content") or "") for m in messages))
    limit = params.get("max_tokens")
    return prompt, int(limit) if isinstance(limit, int) and limit > 0 else DEFAULT_COMPLETION_TOKENS


def worst_case_usd(
    messages: Sequence[dict],
    params: Mapping,
    usd_in: float | None,
    usd_out: float | None,
    usd_per_query: float | None = None,
) -> float | None:
    """A request's cost at its token estimate (:func:`request_tokens`) and the catalog's prices per million tokens,
    else its price per query; None when unpriced."""
    if usd_in is not None and usd_out is not None:
        return cost_usd(*request_tokens(messages, params), usd_in, usd_out)
    return None if usd_per_query is None else float(usd_per_query)


class SpendLimit:
    """USD each LLM may still spend in this collection (``remaining``; an LLM not named has no limit); ``label``
    names the budget in :meth:`messages`."""

    def __init__(self, remaining: Mapping[str, float], label: str = "onboarding budget") -> None:
        for model, usd in remaining.items():
            if not usd >= 0:
                raise ValueError(f"budget_usd[{model!r}]={usd!r}: must be a number >= 0")
        self.remaining = dict(remaining)
        self.label = label
        self.spent: dict[str, float] = defaultdict(float)
        self.reserved: dict[str, float] = defaultdict(float)
        self.in_flight: Counter = Counter()
        self.not_asked: Counter = Counter()
        self.stopped: set[str] = set()
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # made on the collection's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def reserve(self, model: str, worst_usd: float) -> bool:
        """Hold ``worst_usd`` of ``model``'s budget for one pair; False (the pair is not asked) once it cannot fit."""
        if model not in self.remaining:
            return True
        changed = self._condition()
        async with changed:
            while model not in self.stopped:
                if self.spent[model] + self.reserved[model] + worst_usd <= self.remaining[model]:
                    self.reserved[model] += worst_usd
                    self.in_flight[model] += 1
                    return True
                if not self.in_flight[model]:
                    self.stopped.add(model)
                    break
                await changed.wait()
            self.not_asked[model] += 1
            return False

    async def settle(self, model: str, reserved_usd: float, cost_usd: float | None) -> None:
        """Replace a pair's reservation with what it cost (None: unknown, e.g. a failure, counted at worst case)."""
        if model not in self.remaining:
            return
        changed = self._condition()
        async with changed:
            self.reserved[model] -= reserved_usd
            self.in_flight[model] -= 1
            self.spent[model] += reserved_usd if cost_usd is None else cost_usd
            changed.notify_all()

    def messages(self) -> list[str]:
        """One line per LLM whose collection stopped at its budget."""
        return [
            f"llm={model!r}: {self.label} reached ({self.spent[model]:.6f} of {self.remaining[model]:.6f} USD "
            f"left for this run spent); {self.not_asked[model]} prompts not asked (raise the budget to ask them)"
            for model in sorted(self.stopped)
        ]
