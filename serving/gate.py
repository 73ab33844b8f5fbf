"""The champion gate: does a new router version replace the champion?

Both versions route the same test prompts; their deferral curves are compared over the cost range both reach
(:func:`router_core.compare_curves`), so a version that adds a cheaper LLM is not judged on budgets the champion
never had. The candidate is promoted when its AUDC over that range is at least the champion's minus a
tolerance; a champion that routes to an LLM no longer in the pool cannot be served as it was, so the candidate
replaces it. A version whose Psi learned from traffic (``features: validation+traffic``) must also predict held-out
traffic outcomes (a split never used for its features) not worse than the champion (:func:`with_traffic`). Each
decision carries a one-line reason for the model card, a version tag and the asset's page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from router_core import TrafficComparison, compare_curves, compare_on_traffic, deferral_curve, single_llm_points

#: AUDC a candidate may lose against the champion over the common cost range and still be promoted.
DEFAULT_TOLERANCE = 0.002
#: Mean prediction loss (Brier) on held-out traffic a traffic-features candidate may lose and still be promoted.
DEFAULT_TRAFFIC_TOLERANCE = 0.0


def usd_per_1k(usd_per_query: float) -> str:
    """A cost per query as dollars per 1,000 queries in plain decimals: ``$0.12``, ``$3.40``, ``$0.000123``."""
    value = 1000 * float(usd_per_query)
    if not np.isfinite(value):
        return f"${value}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return "$" + np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate version becomes champion (``promote``), why (``reason``, one line), and the numbers
    behind it: the champion compared with, each one's AUDC over the common cost range (USD per query), the worst
    gap between the two curves at a budget in it (candidate minus champion), and the tolerance."""

    promote: bool
    reason: str
    champion_version: str | None = None
    candidate_audc: float | None = None
    champion_audc: float | None = None
    cost_range: tuple[float, float] | None = None
    worst_gap: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    traffic: TrafficComparison | None = None  #: on held-out traffic outcomes (traffic-features candidates only)

    def numbers(self) -> dict[str, float | str]:
        """The decision's numbers, rounded, under short names saying what they are (the asset's metadata); only
        the champion's version when there was no comparison."""
        champion = {"gate_champion": f"v{self.champion_version}" if self.champion_version else "none"}
        if self.traffic is not None:
            champion |= _traffic_numbers(self.traffic)
        if self.cost_range is None or self.candidate_audc is None or self.champion_audc is None:
            return champion
        low, high = self.cost_range
        return {
            **champion,
            "gate_audc": round(self.candidate_audc, 4),
            "gate_champion_audc": round(self.champion_audc, 4),
            "gate_range_usd_per_1k": f"{usd_per_1k(low)}-{usd_per_1k(high)}",
            "gate_worst_gap": round(self.worst_gap or 0.0, 4),
        }


def _traffic_numbers(c: TrafficComparison) -> dict[str, float | int]:
    """A traffic comparison's numbers for :meth:`GateDecision.numbers` (losses absent without outcomes)."""
    losses = {"gate_traffic_loss": c.challenger_loss, "gate_champion_traffic_loss": c.champion_loss}
    return {"gate_traffic_outcomes": c.n, **{k: round(v, 4) for k, v in losses.items() if c.n}}


def no_champion() -> GateDecision:
    """The first version: nothing to compare with."""
    return GateDecision(True, "promoted: the first version (no champion yet)")


def champion_gone(version: str, missing: Sequence[str]) -> GateDecision:
    """The champion routes to LLMs no longer in the pool (deactivated, failing checks): it cannot be served as
    it was, so the candidate replaces it."""
    return GateDecision(
        True,
        f"promoted: champion v{version} routes to LLMs no longer in the pool ({', '.join(sorted(missing))})",
        champion_version=version,
    )


def decide(
    candidate: pl.DataFrame,
    candidate_range: tuple[float, float],
    champion: pl.DataFrame,
    champion_range: tuple[float, float],
    champion_version: str,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateDecision:
    """Promote ``candidate`` when its AUDC over the cost range both curves reach is at least ``champion``'s
    minus ``tolerance`` (both curves measured on the same test prompts; ranges: each pool's single-LLM costs)."""
    c = compare_curves(candidate, champion, candidate_range, champion_range)
    promote = c.candidate_audc >= c.reference_audc - tolerance
    if c.low == c.high:
        where = f"at {usd_per_1k(c.low)} per 1,000 queries (the only budget both reach)"
    else:
        where = f"over {usd_per_1k(c.low)}-{usd_per_1k(c.high)} per 1,000 queries"
    reason = (
        f"{'promoted' if promote else 'kept as challenger'}: AUDC {c.candidate_audc:.4f} vs champion "
        f"v{champion_version}'s {c.reference_audc:.4f} {where}, tolerance {tolerance:g}; at worst "
        f"{c.worst_gap:+.4f} accuracy at {usd_per_1k(c.worst_gap_cost)}"
    )
    return GateDecision(
        promote, reason, champion_version, c.candidate_audc, c.reference_audc, (c.low, c.high), c.worst_gap, tolerance
    )


def judge(
    candidate: pl.DataFrame,
    candidate_range: tuple[float, float],
    champion,
    champion_version: str | None,
    pool: Sequence[str],
    embeddings: np.ndarray,
    scores: np.ndarray,
    realized_costs: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateDecision:
    """The gate for a candidate whose curve on test prompts is ``candidate``: ``champion`` (a fitted router_core
    router, or None) routes the same prompts (``embeddings``; ``scores`` and ``realized_costs`` (n, M) in the
    order of ``pool``) among its own LLMs, then :func:`decide`."""
    if champion is None or champion_version is None:
        return no_champion()
    if missing := [m for m in champion.llms_ if m not in pool]:
        return champion_gone(champion_version, missing)
    idx = [list(pool).index(m) for m in champion.llms_]
    own_scores, own_costs = scores[:, idx], realized_costs[:, idx]
    curve = deferral_curve(champion.predict_error(embeddings), champion.costs_, own_scores, own_costs)
    llm_cost, _ = single_llm_points(own_scores, champion.costs_, own_costs)
    return decide(candidate, candidate_range, curve, (llm_cost.min(), llm_cost.max()), champion_version, tolerance)


def with_traffic(
    decision: GateDecision,
    champion,
    candidate,
    heldout: pl.DataFrame,
    tolerance: float = DEFAULT_TRAFFIC_TOLERANCE,
    same_clusters: bool = True,
) -> GateDecision:
    """``decision`` (on test prompts, :func:`judge`) for a candidate whose Psi learned from traffic, checked on
    ``heldout`` traffic outcomes too (:func:`router_core.compare_on_traffic`, ``candidate`` and ``champion``:
    fitted router_core routers): promoted only when neither the test prompts nor held-out traffic say it is worse
    (mean Brier loss within ``tolerance`` of the champion's); without held-out outcomes it is not promoted (nothing
    shows it is not worse), nor when the champion does not share the candidate's cluster map and embedder
    (``same_clusters`` False: the outcomes' cluster weights mean other clusters to it). Without a champion the test
    decision stands."""
    if champion is None or decision.champion_version is None:
        return decision
    traffic = compare_on_traffic(champion, candidate, heldout) if same_clusters else None
    on_traffic = traffic is not None and traffic.not_worse(tolerance)
    on_test = decision.promote
    verdict = "promoted" if on_test and on_traffic else "kept as challenger"
    test_reason = decision.reason.split(": ", 1)[1]
    if traffic is None:
        why = f"not checked (champion v{decision.champion_version} routes with another cluster map or embedder)"
    else:
        checked = "not worse" if on_traffic else "worse" if traffic.n else "not checked"
        why = f"{checked} ({traffic.reason(tolerance)}, tolerance {tolerance:g})"
    reason = (
        f"{verdict}: on test prompts {'not worse' if on_test else 'worse'} ({test_reason}); on held-out traffic {why}"
    )
    return replace(decision, promote=on_test and on_traffic, reason=reason, traffic=traffic)
