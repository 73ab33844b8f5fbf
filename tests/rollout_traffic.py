"""Decision records of a rollout (champion serving, challenger shadowing, or a canary the other way round) and their
outcomes, as frames for router_core.rollout and for the warehouse. Shared by the rollout tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl


def traffic(
    n: int,
    version: str = "1",
    shadow: str | None = "2",
    agree: float = 0.8,
    error: float = 0.30,
    shadow_error: float = 0.28,
    cost: float = 1e-3,
    shadow_cost: float = 1e-3,
    failed: float = 0.0,
    seed: int = 0,
    start: int = 0,
    prefix: str = "r",
    served_alias: str = "champion",
) -> pl.DataFrame:
    """``n`` decision records served by ``version`` with ``shadow``'s choice beside (None: no shadow), decided now:
    ``agree`` of them the same first choice, predicted errors and costs drawn around the given means, the first
    ``failed`` share answered 502."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < agree
    return pl.DataFrame(
        {
            "request_id": [f"{prefix}{start + i}" for i in range(n)],
            "at": [datetime.now(UTC)] * n,
            "budget_kind": ["none"] * n,
            "router_version": [version] * n,
            "served_alias": [served_alias] * n,
            "chosen_llm": ["a"] * n,
            "status": np.where(np.arange(n) < failed * n, 502, 200).astype(np.int32),
            "realised_cost_usd": rng.normal(cost, cost / 10, n),
            "ranked_llms": [["a", "b"]] * n,
            "ranked_predicted_error": [[e, 0.5] for e in rng.normal(error, 0.05, n)],
            "ranked_predicted_cost": [[c, 0.1] for c in rng.normal(cost, cost / 10, n)],
            "shadow_version": [shadow] * n,
            "shadow_llm": [None if shadow is None else ("a" if s else "b") for s in same],
            "shadow_predicted_error": rng.normal(shadow_error, 0.05, n) if shadow else [None] * n,
            "shadow_predicted_cost": rng.normal(shadow_cost, shadow_cost / 10, n) if shadow else [None] * n,
        },
        schema_overrides={"shadow_version": pl.String, "shadow_llm": pl.String},
    )


def outcomes(decisions: pl.DataFrame, error: float, seed: int = 1) -> pl.DataFrame:
    """A 0/1 score for every request, wrong with probability ``error``."""
    rng = np.random.default_rng(seed)
    return decisions.select("request_id", score=pl.Series((rng.random(decisions.height) >= error).astype(float)))


def feedback(outcomes: pl.DataFrame) -> pl.DataFrame:
    """The ``outcomes`` as ratings for the warehouse's ``traffic_feedback``."""
    return outcomes.select(
        "request_id", "score", feedback_id="request_id", at=pl.lit(datetime.now(UTC)), source=pl.lit("api")
    )
