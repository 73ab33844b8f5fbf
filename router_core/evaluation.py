"""Deferral curves (average cost vs. accuracy), their concave hull, AUDC, QNC (figures: :mod:`router_core.plots`).

A router traces operating points by sweeping ``cost_weight``. Randomising between two cost weights reaches
any point on the segment between their points, so a router's achievable curve is the *upper concave hull*
of its points; spending more than the most accurate point needs is never forced, so the curve is flat after
its peak. Below its cheapest point the curve is held at that point's accuracy.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core.routers import choose

__all__ = [
    "DEFAULT_ACCURACY_TOLERANCE",
    "BudgetMix",
    "CurveComparison",
    "OperatingPoint",
    "audc",
    "budget_mix",
    "compare_curves",
    "concave_hull",
    "default_cost_weights",
    "default_operating_point",
    "deferral_curve",
    "evaluate_router",
    "operating_point",
    "out_of_fold_errors",
    "qnc",
    "single_llm_points",
    "summarize_curve",
]


def default_cost_weights(costs: np.ndarray, n: int = 200) -> np.ndarray:
    """0, a geometric sweep wide enough to cross every switch between LLMs, and ``inf`` (all to cheapest)."""
    costs = np.asarray(costs, dtype=np.float64)
    span = float(costs.max() - costs.min()) or 1.0
    return np.concatenate([[0.0], np.geomspace(1e-4, 1e4, n) / span, [np.inf]])


def out_of_fold_errors(router, embeddings: np.ndarray, errors: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(n, M) predicted errors of a fitted router's pool on its own validation prompts, each predicted by a copy
    fitted on the other folds (cross-fitting): what it predicts for prompts it has not seen. A deferral curve
    on these is an honest stand-in for new prompts (in-sample predictions flatter the router).

    ``errors`` is what ``router`` was fitted on: (n, M) in the order of ``router.llms_``, NaN = not collected.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.shape != (len(embeddings), len(router.llms_)):
        raise RouterInputError(
            "errors", errors.shape, f"need (n_prompts, n_llms)=({len(embeddings)}, {len(router.llms_)})"
        )
    if folds < 2 or folds > len(embeddings):
        raise RouterInputError("folds", folds, f"must be in [2, {len(embeddings)}]")
    fold_of = np.random.default_rng(seed).permutation(len(embeddings)) % folds
    predicted = np.empty_like(errors)
    for fold in range(folds):
        held = fold_of == fold
        clone = copy.deepcopy(router).fit_arrays(embeddings[~held], errors[~held], router.llms_, router.costs_)
        predicted[held] = clone.predict_error(embeddings[held])
    return predicted


def deferral_curve(
    predicted_error: np.ndarray,
    costs: np.ndarray,
    scores: np.ndarray,
    realized_costs: np.ndarray | None = None,
    cost_weights: Sequence[float] | None = None,
) -> pl.DataFrame:
    """Operating points of a router over a sweep of ``cost_weight``.

    Parameters
    ----------
    predicted_error : (n, M)
        The router's predicted errors on n evaluation prompts for the M candidate LLMs.
    costs : (M,)
        The costs the router trades off (its estimate per query).
    scores : (n, M)
        True scores (1 = correct) of each LLM on each evaluation prompt.
    realized_costs : (n, M) or None
        What each answer actually cost; ``None`` uses ``costs`` for every prompt.
    cost_weights : sequence or None
        Sweep; default :func:`default_cost_weights`.

    Returns
    -------
    polars.DataFrame with columns ``cost_weight, cost, accuracy`` (means over prompts).
    """
    predicted_error = np.asarray(predicted_error, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if predicted_error.shape != scores.shape or costs.shape != (scores.shape[1],):
        raise RouterInputError(
            "shapes", (predicted_error.shape, costs.shape, scores.shape), "need (n, M), (M,), (n, M)"
        )
    if np.isnan(scores).any():
        raise RouterInputError("scores", "NaN", "evaluation needs every LLM's score on every prompt")
    realized = np.broadcast_to(costs, scores.shape) if realized_costs is None else np.asarray(realized_costs)
    weights = default_cost_weights(costs) if cost_weights is None else np.asarray(cost_weights, dtype=float)
    rows = np.arange(scores.shape[0])
    points = []
    for weight in weights:
        chosen = choose(predicted_error, costs, float(weight))
        points.append((float(weight), realized[rows, chosen].mean(), scores[rows, chosen].mean()))
    return pl.DataFrame(points, schema=["cost_weight", "cost", "accuracy"], orient="row")


@dataclass(frozen=True)
class BudgetMix:
    """How to meet a budget: route a share ``high_share`` of prompts with cost weight ``high`` (the more
    accurate, pricier operating point) and the rest with ``low``; ``cost`` and ``accuracy`` are the mix's
    expected values on the curve it was resolved on."""

    low: float
    high: float
    high_share: float
    cost: float
    accuracy: float

    def cost_weights(self, keys: Sequence[str]) -> np.ndarray:
        """One cost weight per prompt: ``high`` for a share ``high_share`` of them, drawn by a hash of each key
        (e.g. the prompt's text), so a prompt always gets the same weight and no state is needed."""
        draws = np.array([int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8 for key in keys])
        return np.where(draws < self.high_share, self.high, self.low)


def budget_mix(curve: pl.DataFrame, max_cost: float | None = None, min_accuracy: float | None = None) -> BudgetMix:
    """The point of ``curve``'s concave hull (from :func:`deferral_curve`) that meets a budget, as a mix of the
    two operating points around it.

    With ``max_cost`` (per query): the most accurate mix costing at most that (on average). With
    ``min_accuracy``: the cheapest mix at least that accurate. Exactly one must be given.

    Examples
    --------
    >>> curve = pl.DataFrame({"cost_weight": [0.0, 1.0, 10.0], "cost": [3.0, 2.0, 1.0], "accuracy": [0.8, 0.7, 0.5]})
    >>> budget_mix(curve, max_cost=1.5)
    BudgetMix(low=10.0, high=1.0, high_share=0.5, cost=1.5, accuracy=0.6)
    """
    if (max_cost is None) == (min_accuracy is None):
        raise RouterInputError("budget", (max_cost, min_accuracy), "give exactly one of max_cost, min_accuracy")
    for field, value in (("max_cost_per_query", max_cost), ("min_accuracy", min_accuracy)):
        if value is not None and not _finite(value):
            raise RouterInputError(field, value, "must be a finite number")
    hull = concave_hull(curve).join(curve, on=["cost", "accuracy"], how="left").unique(["cost"], keep="first")
    hull = hull.sort("cost")
    costs, accuracies, weights = (hull[c].to_numpy() for c in ("cost", "accuracy", "cost_weight"))
    if max_cost is not None:
        if max_cost < costs[0] * (1 - 1e-9):  # a mean of equal costs may round just above them
            raise RouterInputError("max_cost_per_query", max_cost, f"below the cheapest routing ({costs[0]:.6g})")
        position = np.interp(max_cost, costs, np.arange(len(costs)))
    else:
        if min_accuracy > accuracies[-1]:
            raise RouterInputError(
                "min_accuracy", min_accuracy, f"above the most accurate routing ({accuracies[-1]:.4f})"
            )
        position = np.interp(min_accuracy, accuracies, np.arange(len(accuracies)))
    i = min(int(np.floor(position)), len(costs) - 1)
    j, share = min(i + 1, len(costs) - 1), float(position - i)
    return BudgetMix(
        low=float(weights[i]),
        high=float(weights[j]),
        high_share=share,
        cost=float(costs[i] + share * (costs[j] - costs[i])),
        accuracy=float(accuracies[i] + share * (accuracies[j] - accuracies[i])),
    )


def _finite(value: object) -> bool:
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except TypeError:
        return False


def concave_hull(curve: pl.DataFrame) -> pl.DataFrame:
    """Upper concave hull of the operating points, up to the most accurate one (columns ``cost, accuracy``)."""
    if curve.height == 0:
        raise RouterInputError("curve", "empty", "a deferral curve needs at least one point")
    pts = np.unique(curve.select("cost", "accuracy").to_numpy(), axis=0)  # sorted by cost, then accuracy
    peak = pts[:, 1].max()
    pts = pts[pts[:, 0] <= pts[pts[:, 1] == peak, 0].min()]  # beyond the peak the curve is flat
    hull: list[np.ndarray] = []
    for p in pts:
        if hull and hull[-1][0] == p[0]:
            hull.pop()  # same cost: keep the more accurate point (sorted last)
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # hull[-1] is not above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return pl.DataFrame(np.array(hull), schema=["cost", "accuracy"], orient="row")


def _hull_arrays(curve: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    hull = concave_hull(curve)
    return hull["cost"].to_numpy(), hull["accuracy"].to_numpy()


def audc(curve: pl.DataFrame, cost_range: tuple[float, float]) -> float:
    """Area under the (hulled) deferral curve over ``cost_range``, divided by its width: a mean accuracy."""
    low, high = map(float, cost_range)
    if not high > low:
        raise RouterInputError("cost_range", cost_range, "needs low < high")
    xs, ys = _hull_arrays(curve)
    grid = np.unique(np.concatenate([[low, high], xs[(xs > low) & (xs < high)]]))
    values = np.interp(grid, xs, ys)  # flat left of the first point and right of the peak
    return float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2 / (high - low))


def qnc(curve: pl.DataFrame, target_accuracy: float, reference_cost: float) -> float:
    """Cheapest budget whose hulled accuracy reaches ``target_accuracy``, over ``reference_cost``.

    Typically the target is the best single LLM's accuracy and the reference its cost; ``inf`` if never.
    """
    if not reference_cost > 0:
        raise RouterInputError("reference_cost", reference_cost, "must be > 0")
    xs, ys = _hull_arrays(curve)
    reached = np.flatnonzero(ys >= target_accuracy - 1e-12)
    if reached.size == 0:
        return float("inf")
    i = reached[0]
    if i == 0:
        return float(xs[0] / reference_cost)
    frac = (target_accuracy - ys[i - 1]) / (ys[i] - ys[i - 1])
    return float((xs[i - 1] + frac * (xs[i] - xs[i - 1])) / reference_cost)


def single_llm_points(scores: np.ndarray, costs: np.ndarray, realized_costs: np.ndarray | None = None):
    """(cost, accuracy) of each LLM answering every evaluation prompt alone: two (M,) arrays."""
    scores = np.asarray(scores, dtype=np.float64)
    realized = np.broadcast_to(costs, scores.shape) if realized_costs is None else np.asarray(realized_costs)
    return realized.mean(axis=0), scores.mean(axis=0)


def summarize_curve(
    curve: pl.DataFrame, scores: np.ndarray, costs: np.ndarray, realized_costs: np.ndarray | None = None
) -> tuple[float, float]:
    """AUDC over [cheapest, most expensive] LLM of the pool, and QNC against its most accurate LLM."""
    llm_cost, llm_acc = single_llm_points(scores, costs, realized_costs)
    best = int(llm_acc.argmax())
    low, high = float(llm_cost.min()), float(llm_cost.max())
    area = audc(curve, (low, high)) if high > low else float(np.interp(low, *_hull_arrays(curve)))
    return area, qnc(curve, llm_acc[best], llm_cost[best]) if llm_cost[best] > 0 else float("nan")


def evaluate_router(
    router, embeddings: np.ndarray, scores: np.ndarray, realized_costs: np.ndarray | None = None
) -> tuple[float, float, pl.DataFrame]:
    """AUDC, QNC and deferral curve of a fitted router's whole pool on evaluation prompts (``scores``: (n, M))."""
    curve = deferral_curve(router.predict_error(embeddings), router.costs_, scores, realized_costs)
    return (*summarize_curve(curve, scores, router.costs_, realized_costs), curve)


def _hull_at(curve: pl.DataFrame, costs: np.ndarray) -> np.ndarray:
    """The hulled accuracy of ``curve`` at budgets ``costs`` (flat left of its first point, right of its peak)."""
    return np.interp(costs, *_hull_arrays(curve))


def _cost_span(curve: pl.DataFrame) -> tuple[float, float]:
    costs = curve["cost"].to_numpy()
    return float(costs.min()), float(costs.max())


@dataclass(frozen=True)
class CurveComparison:
    """Two deferral curves measured on the same prompts, over the budgets both reach (``low`` to ``high``, cost
    per query): each one's AUDC over that one range, and the worst gap, the candidate's hulled accuracy minus
    the reference's at the budget ``worst_gap_cost`` where it is lowest. When the common range is one budget
    (``low == high``), each "AUDC" is the hulled accuracy there."""

    low: float
    high: float
    candidate_audc: float
    reference_audc: float
    worst_gap: float
    worst_gap_cost: float

    @property
    def audc_gap(self) -> float:
        """Candidate AUDC minus reference AUDC over the common range."""
        return self.candidate_audc - self.reference_audc


def compare_curves(
    candidate: pl.DataFrame,
    reference: pl.DataFrame,
    candidate_range: tuple[float, float] | None = None,
    reference_range: tuple[float, float] | None = None,
) -> CurveComparison:
    """Compare two deferral curves like with like: over the intersection of their cost ranges.

    AUDC over a pool's own [cheapest, priciest] range is no ranking across pools: a pool that adds a cheaper
    LLM widens its range to the left, where every router is less accurate, and loses AUDC while routing better
    at every budget. Over the common range, and curve against curve at every budget in it, it does not.

    Parameters
    ----------
    candidate, reference : polars.DataFrame
        Deferral curves (``cost, accuracy``) measured on the same prompts.
    candidate_range, reference_range : (low, high) or None
        Each curve's cost range, e.g. its pool's single-LLM costs (:func:`single_llm_points`); default: the
        costs its points reach.

    Examples
    --------
    >>> old = pl.DataFrame({"cost": [1.0, 2.0], "accuracy": [0.5, 0.7]})
    >>> new = pl.DataFrame({"cost": [0.1, 1.0, 2.0], "accuracy": [0.2, 0.6, 0.7]})
    >>> c = compare_curves(new, old)
    >>> (c.low, c.high, round(c.candidate_audc, 3), round(c.reference_audc, 3), round(c.worst_gap, 3))
    (1.0, 2.0, 0.65, 0.6, 0.0)
    """
    ranges = [
        r if r is not None else _cost_span(c) for r, c in ((candidate_range, candidate), (reference_range, reference))
    ]
    low, high = max(float(r[0]) for r in ranges), min(float(r[1]) for r in ranges)
    if high < low - 1e-12 * max(abs(low), 1.0):
        raise RouterInputError("cost_range", tuple(ranges), "the two curves share no budget to compare at")
    if high <= low:  # one common budget: compare the accuracy there
        low = high = max(low, high)
        accuracies = [float(_hull_at(c, np.array([low]))[0]) for c in (candidate, reference)]
        return CurveComparison(low, high, *accuracies, accuracies[0] - accuracies[1], low)
    knots = np.concatenate([[low, high], *(xs for xs, _ in map(_hull_arrays, (candidate, reference)))])
    grid = np.unique(knots[(knots >= low) & (knots <= high)])  # the gap is linear between the hulls' knots
    gaps = _hull_at(candidate, grid) - _hull_at(reference, grid)
    worst = int(gaps.argmin())
    return CurveComparison(
        low, high, audc(candidate, (low, high)), audc(reference, (low, high)), float(gaps[worst]), float(grid[worst])
    )


#: How far below a curve's best accuracy the default operating point may be (0.5 accuracy points).
DEFAULT_ACCURACY_TOLERANCE = 0.005


@dataclass(frozen=True)
class OperatingPoint:
    """One point of a deferral curve chosen as a router's default: its ``cost_weight`` and the ``cost`` and
    ``accuracy`` it has on the curve, the curve's ``best_accuracy``, and ``tolerance``, the accuracy given up
    for a cheaper point (None: the cost weight was given, not chosen)."""

    cost_weight: float
    cost: float
    accuracy: float
    best_accuracy: float
    tolerance: float | None = None


def default_operating_point(curve: pl.DataFrame, tolerance: float = DEFAULT_ACCURACY_TOLERANCE) -> OperatingPoint:
    """The cheapest point of ``curve`` (from :func:`deferral_curve`, e.g. on cross-fitted validation
    predictions) whose accuracy is within ``tolerance`` of the curve's best; among equally cheap points the
    more accurate, then the smaller cost weight.

    Cost weight 0 sends every prompt to the LLM predicted most accurate however expensive; a few tenths of an
    accuracy point usually buy most of the way down to a far cheaper mix.

    Examples
    --------
    >>> curve = pl.DataFrame({"cost_weight": [0.0, 1.0, 10.0], "cost": [3.0, 1.0, 0.5], "accuracy": [0.80, 0.797, 0.7]})
    >>> default_operating_point(curve)
    OperatingPoint(cost_weight=1.0, cost=1.0, accuracy=0.797, best_accuracy=0.8, tolerance=0.005)
    """
    if not tolerance >= 0:
        raise RouterInputError("tolerance", tolerance, "must be a number >= 0")
    valid = curve.filter(pl.col("accuracy").is_not_nan() & pl.col("cost").is_not_nan())
    if valid.height == 0:
        raise RouterInputError("curve", "no point with a cost and an accuracy", "need at least one operating point")
    best = float(valid["accuracy"].max())
    near = valid.filter(pl.col("accuracy") >= best - tolerance - 1e-12)
    chosen = near.sort(["cost", "accuracy", "cost_weight"], descending=[False, True, False]).row(0, named=True)
    return OperatingPoint(
        float(chosen["cost_weight"]), float(chosen["cost"]), float(chosen["accuracy"]), best, tolerance
    )


def operating_point(
    predicted_error: np.ndarray, costs: np.ndarray, scores: np.ndarray, cost_weight: float | None = None
) -> OperatingPoint:
    """The default operating point of a pool on evaluation prompts (arguments as :func:`deferral_curve`):
    :func:`default_operating_point` of its curve when ``cost_weight`` is None, else that cost weight's point."""
    curve = deferral_curve(predicted_error, costs, scores)
    if cost_weight is None:
        return default_operating_point(curve)
    point = deferral_curve(predicted_error, costs, scores, cost_weights=[cost_weight]).row(0, named=True)
    return OperatingPoint(float(cost_weight), point["cost"], point["accuracy"], float(curve["accuracy"].max()))
