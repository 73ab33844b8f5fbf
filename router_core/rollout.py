"""Champion vs challenger on the same traffic, and the rules that promote the challenger or roll the champion back.

The gateway serves each routed request with the champion (or, for a canary share, the challenger) and, with the
shadow on, also logs the challenger's choice for the same prompt from the same embedding (``shadow_version``,
``shadow_llm``, ``shadow_predicted_error``, ``shadow_predicted_cost``). From those decision records and the traffic
outcomes (a score in [0, 1] per rated request), :func:`rollout_comparison` measures, each with a confidence interval:

- ``agreement``: the share of shadowed requests (either version serving, the other shadowing) where both versions
  pick the same LLM;
- ``predicted_error`` / ``predicted_cost``: each version's prediction for its own choice on the shadowed requests,
  and their paired ``difference`` (challenger - champion);
- ``observed_error``, ``upstream_error_rate`` (status >= 500) and ``cost_per_request`` (realised USD) of the
  requests each version served, and the observed error's ``difference``.

:func:`rollout_decision` applies :class:`RolloutRules`: roll back when the champion breaches a guardrail with
confidence (its interval's lower bound past the limit), else promote when the challenger is not worse with confidence
(the difference's upper bound within the tolerance), else hold, always with the reason; nothing moves on fewer
than ``min_requests`` requests. No Dagster, no MLflow: the sensor and the ``rollout_report`` asset call this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core.frames import _require_columns
from router_core.online import _quantile, _wilson

__all__ = [
    "RolloutDecision",
    "RolloutRules",
    "rollout_comparison",
    "rollout_decision",
    "shadowed_requests",
]

COMPARISON_SCHEMA = {
    "metric": pl.String,
    "side": pl.String,  # champion, challenger, difference (challenger - champion) or both
    "router_version": pl.String,
    "count": pl.Int64,
    "mean": pl.Float64,
    "low": pl.Float64,
    "high": pl.Float64,
}
#: Decision columns the comparison reads.
DECISION_COLUMNS = [
    "request_id",
    "router_version",
    "chosen_llm",
    "status",
    "realised_cost_usd",
    "ranked_llms",
    "ranked_predicted_error",
    "ranked_predicted_cost",
    "shadow_version",
    "shadow_llm",
    "shadow_predicted_error",
    "shadow_predicted_cost",
]


@dataclass(frozen=True)
class RolloutRules:
    """When the rollout sensor moves an alias (the defaults are documented in docs/serving.md).

    ``min_requests``: requests before any move (shadowed ones to promote, the champion's own to roll back);
    ``confidence``: of every interval; ``error_tolerance``: promote while the challenger's error may be at most this
    much above the champion's (upper bound of the difference); ``cost_tolerance``: likewise for the predicted cost
    per request, as a fraction of the champion's; ``min_rated``: observed errors are used (instead of predicted)
    once each version has this many rated requests. Guardrails, on the champion's traffic since it became champion
    (a breach: the interval's lower bound past the limit): ``max_observed_error``, ``max_upstream_error_rate`` and
    ``max_cost_per_request_usd`` (0: no cost guardrail).
    """

    min_requests: int = 200
    confidence: float = 0.95
    error_tolerance: float = 0.01
    cost_tolerance: float = 0.05
    min_rated: int = 30
    max_observed_error: float = 0.5
    max_upstream_error_rate: float = 0.05
    max_cost_per_request_usd: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.min_requests, int) and self.min_requests >= 1):
            raise RouterInputError("min_requests", self.min_requests, "must be an integer >= 1")
        if not 0 < self.confidence < 1:
            raise RouterInputError("confidence", self.confidence, "must be in (0, 1)")
        for name in ("error_tolerance", "cost_tolerance", "max_observed_error", "max_upstream_error_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise RouterInputError(name, value, "must be a finite number >= 0")
        if not (math.isfinite(self.max_cost_per_request_usd) and self.max_cost_per_request_usd >= 0):
            raise RouterInputError("max_cost_per_request_usd", self.max_cost_per_request_usd, "must be >= 0")


@dataclass(frozen=True)
class RolloutDecision:
    """``action``: "promote", "rollback" or "hold"; ``reason``: one line; ``numbers``: what it was decided on."""

    action: str
    reason: str
    numbers: dict[str, float | int | str | None] = field(default_factory=dict)


def shadowed_requests(decisions: pl.DataFrame, champion: str, challenger: str) -> pl.DataFrame:
    """Requests one version served with the other's choice logged beside (the champion's with the challenger's
    shadow, and canary requests the other way round): ``request_id, champion_llm, challenger_llm, champion_error,
    challenger_error, champion_cost, challenger_cost`` (each version's prediction for its own first choice)."""
    _require_columns(decisions, "decisions", DECISION_COLUMNS)
    served = {
        "llm": pl.col("ranked_llms").list.first(),
        "error": pl.col("ranked_predicted_error").list.first(),
        "cost": pl.col("ranked_predicted_cost").list.first(),
    }
    shadow = {
        "llm": pl.col("shadow_llm"),
        "error": pl.col("shadow_predicted_error"),
        "cost": pl.col("shadow_predicted_cost"),
    }
    parts = []
    for serving, shadowing, mine, theirs in (
        (champion, challenger, served, shadow),
        (challenger, champion, shadow, served),
    ):
        both = decisions.filter(
            (pl.col("router_version") == serving)
            & (pl.col("shadow_version") == shadowing)
            & pl.col("shadow_llm").is_not_null()
            & pl.col("ranked_llms").list.len().gt(0)
        )
        columns = {
            f"{side}_{k}": v.cast(pl.Float64 if k != "llm" else pl.String)
            for side, exprs in (("champion", mine), ("challenger", theirs))
            for k, v in exprs.items()
        }
        parts.append(both.select("request_id", **columns))
    return pl.concat(parts)


def _mean_row(metric: str, side: str, version: str | None, values: np.ndarray, zq: float) -> dict:
    """A mean with its normal-approximation interval (none below two values)."""
    values = values[np.isfinite(values)]
    n = len(values)
    mean = float(values.mean()) if n else None
    half = zq * float(values.std(ddof=1)) / math.sqrt(n) if n >= 2 else None
    low, high = (mean - half, mean + half) if half is not None else (None, None)
    return {
        "metric": metric,
        "side": side,
        "router_version": version,
        "count": n,
        "mean": mean,
        "low": low,
        "high": high,
    }


def _rate_row(metric: str, side: str, version: str | None, hits: np.ndarray, zq: float) -> dict:
    """A rate with its Wilson interval."""
    n = len(hits)
    rate = float(hits.mean()) if n else None
    if not n:
        return {"metric": metric, "side": side, "router_version": version, "count": 0, "mean": None, "low": None,
                "high": None}  # fmt: skip
    low, high = _wilson(np.array([rate]), np.array([n], dtype=np.float64), zq)
    return {"metric": metric, "side": side, "router_version": version, "count": n, "mean": rate,
            "low": float(low[0]), "high": float(high[0])}  # fmt: skip


def _welch_row(metric: str, a: np.ndarray, b: np.ndarray, zq: float) -> dict:
    """mean(b) - mean(a) of two independent samples, with its interval (none below two values each)."""
    if len(a) < 2 or len(b) < 2:
        mean = float(b.mean() - a.mean()) if len(a) and len(b) else None
        return {"metric": metric, "side": "difference", "router_version": None, "count": min(len(a), len(b)),
                "mean": mean, "low": None, "high": None}  # fmt: skip
    mean = float(b.mean() - a.mean())
    half = zq * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return {"metric": metric, "side": "difference", "router_version": None, "count": min(len(a), len(b)),
            "mean": mean, "low": mean - half, "high": mean + half}  # fmt: skip


def _served(decisions: pl.DataFrame, outcomes: pl.DataFrame, version: str) -> tuple[pl.DataFrame, np.ndarray]:
    """The decisions ``version`` served, and the observed errors (1 - score) of those rated."""
    served = decisions.filter(pl.col("router_version") == version)
    rated = served.join(outcomes.select("request_id", "score"), on="request_id", how="inner")
    return served, 1.0 - rated["score"].cast(pl.Float64).to_numpy()


def rollout_comparison(
    decisions: pl.DataFrame, outcomes: pl.DataFrame, champion: str, challenger: str | None, confidence: float = 0.95
) -> pl.DataFrame:
    """The champion vs the challenger (None: the champion alone) on the same traffic: one row per metric and side
    (:data:`COMPARISON_SCHEMA`; see the module's docstring), intervals at ``confidence``."""
    if not 0 < confidence < 1:
        raise RouterInputError("confidence", confidence, "must be in (0, 1)")
    _require_columns(outcomes, "outcomes", ["request_id", "score"])
    zq = _quantile(confidence)
    rows = []
    sides = [("champion", champion)] + ([("challenger", challenger)] if challenger is not None else [])
    if challenger is not None:
        pairs = shadowed_requests(decisions, champion, challenger)
        same = (pairs["champion_llm"] == pairs["challenger_llm"]).to_numpy().astype(np.float64)
        rows.append(_rate_row("agreement", "both", None, same, zq))
        for metric in ("error", "cost"):
            mine, theirs = (pairs[f"{s}_{metric}"].cast(pl.Float64).to_numpy() for s in ("champion", "challenger"))
            rows.append(_mean_row(f"predicted_{metric}", "champion", champion, mine, zq))
            rows.append(_mean_row(f"predicted_{metric}", "challenger", challenger, theirs, zq))
            rows.append(_mean_row(f"predicted_{metric}", "difference", None, theirs - mine, zq))
    observed = {}
    for side, version in sides:
        served, errors = _served(decisions, outcomes, version)
        observed[side] = errors
        rows.append(_mean_row("observed_error", side, version, errors, zq))
        upstream = (served["status"].fill_null(0) >= 500).to_numpy().astype(np.float64)
        rows.append(_rate_row("upstream_error_rate", side, version, upstream, zq))
        cost = served["realised_cost_usd"].drop_nulls().cast(pl.Float64).to_numpy()
        rows.append(_mean_row("cost_per_request", side, version, cost, zq))
    if challenger is not None:
        rows.append(_welch_row("observed_error", observed["champion"], observed["challenger"], zq))
    return pl.DataFrame(rows, schema=COMPARISON_SCHEMA, orient="row")


def _row(table: pl.DataFrame, metric: str, side: str) -> dict:
    found = table.filter((pl.col("metric") == metric) & (pl.col("side") == side))
    return found.row(0, named=True) if found.height else dict.fromkeys(COMPARISON_SCHEMA)


def rollout_decision(
    decisions: pl.DataFrame,
    outcomes: pl.DataFrame,
    champion: str,
    challenger: str | None,
    previous: str | None,
    rules: RolloutRules,
) -> RolloutDecision:
    """Roll back (to ``previous``) on a guardrail breach, else promote the challenger when it is not worse with
    confidence, else hold; ``decisions`` are those since the champion became champion."""
    table = rollout_comparison(decisions, outcomes, champion, challenger, rules.confidence)
    numbers = {"champion": champion, "challenger": challenger, "previous_champion": previous, **asdict(rules)}
    breach = _breach(table, rules, champion)
    if breach is not None:
        if previous is None:
            return RolloutDecision("hold", f"{breach}; no previous-champion to roll back to", numbers)
        return RolloutDecision("rollback", f"{breach}: roll back to v{previous}", numbers)
    if challenger is None:
        return RolloutDecision("hold", f"champion v{champion} within its guardrails; no challenger", numbers)
    return _promotion(table, rules, champion, challenger, numbers)


def _breach(table: pl.DataFrame, rules: RolloutRules, champion: str) -> str | None:
    """The first guardrail the champion breaches with confidence, as a phrase; None when none (or too few
    requests to say)."""
    served = _row(table, "upstream_error_rate", "champion")["count"] or 0
    if served < rules.min_requests:
        return None
    level = f"{rules.confidence:.0%}"
    checks = [
        ("observed_error", rules.max_observed_error, "observed error", "{:.3f}"),
        ("upstream_error_rate", rules.max_upstream_error_rate, "upstream error rate", "{:.3f}"),
        ("cost_per_request", rules.max_cost_per_request_usd or None, "cost per request (USD)", "{:.6f}"),
    ]
    for metric, limit, what, fmt in checks:
        row = _row(table, metric, "champion")
        if limit is None or row["low"] is None:
            continue
        if metric == "observed_error" and row["count"] < rules.min_rated:
            continue
        if row["low"] > limit:
            return (
                f"champion v{champion}: {what} {fmt.format(row['mean'])} over {row['count']} requests, {level} lower "
                f"bound {fmt.format(row['low'])} > limit {fmt.format(limit)}"
            )
    return None


def _promotion(
    table: pl.DataFrame, rules: RolloutRules, champion: str, challenger: str, numbers: dict
) -> RolloutDecision:
    """Promote when, over at least ``min_requests`` shadowed requests, the challenger's error (observed when both
    have ``min_rated`` rated requests, else predicted) and predicted cost are not worse with confidence."""
    shadowed = _row(table, "agreement", "both")["count"] or 0
    numbers = {**numbers, "shadowed_requests": shadowed}
    if shadowed < rules.min_requests:
        reason = (
            f"too few requests: {shadowed} shadowed by challenger v{challenger} < min_requests {rules.min_requests}"
        )
        return RolloutDecision("hold", reason, numbers)
    rated = [_row(table, "observed_error", side)["count"] or 0 for side in ("champion", "challenger")]
    source = "observed" if min(rated) >= rules.min_rated else "predicted"
    error = _row(table, f"{source}_error", "difference")
    cost = _row(table, "predicted_cost", "difference")
    base = _row(table, "predicted_cost", "champion")["mean"] or 0.0
    cost_limit = rules.cost_tolerance * base
    numbers = {**numbers, "error_source": source, "error_difference": error["mean"], "error_upper": error["high"],
               "cost_difference": cost["mean"], "cost_upper": cost["high"], "cost_limit": cost_limit}  # fmt: skip
    if error["high"] is None or cost["high"] is None:
        return RolloutDecision("hold", f"too few values for an interval ({source} error, predicted cost)", numbers)
    level = f"{rules.confidence:.0%}"
    said = (
        f"challenger v{challenger} vs champion v{champion} over {shadowed} shadowed requests: {source} error "
        f"{error['mean']:+.4f} ({level} upper {error['high']:+.4f}, tolerance {rules.error_tolerance:g}), predicted "
        f"cost {cost['mean']:+.3g} USD ({level} upper {cost['high']:+.3g}, limit {cost_limit:.3g})"
    )
    if error["high"] <= rules.error_tolerance and cost["high"] <= cost_limit:
        return RolloutDecision("promote", f"not worse: {said}", numbers)
    return RolloutDecision("hold", f"not shown not worse: {said}", numbers)
