"""A pool fitted and scored as one router version: UniRoute and the prompt-blind ZeroRouter fitted on the
validation prompts, its default operating point chosen on the cross-fitted validation curve, and both routers
scored on the test prompts every LLM of the pool answered.

>>> import numpy as np, polars as pl
>>> from router_core import KMeansClusterMap
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(40, 4))
>>> ids = [f"p{i}" for i in range(40)]
>>> outcomes = pl.DataFrame({"prompt_id": ids * 2, "model": ["a"] * 40 + ["b"] * 40,
...                          "score": rng.integers(0, 2, 80).astype(float)})
>>> cmap = KMeansClusterMap(2, seed=0).fit(x)
>>> fit = fit_pool(cmap, ["a", "b"], {"a": 0.001, "b": 0.01}, ids, x, outcomes, ids, x, outcomes)
>>> [round(c, 6) for c in fit.scores.cost_range], fit.point.cost_weight >= 0
([0.001, 0.01], True)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core.cluster_maps import ClusterMap
from router_core.evaluation import (
    OperatingPoint,
    evaluate_router,
    operating_point,
    out_of_fold_errors,
    single_llm_points,
)
from router_core.frames import error_matrix, value_matrix
from router_core.routers import UniRouter, ZeroRouter, choose
from router_core.traffic_features import TrafficErrorStats

__all__ = ["PoolFit", "RouterScores", "fit_pool", "score_router"]


@dataclass(frozen=True)
class RouterScores:
    """UniRoute and ZeroRouter on the test prompts; each LLM alone (``llm_cost``, ``llm_acc``); which LLM
    UniRoute picks per prompt at the default cost weight (``chosen``) and that operating point's mean accuracy
    and cost."""

    audc: float
    qnc: float
    curve: pl.DataFrame
    zero_audc: float
    zero_qnc: float
    zero_curve: pl.DataFrame
    llm_cost: np.ndarray
    llm_acc: np.ndarray
    chosen: np.ndarray
    accuracy_at_default: float
    cost_at_default: float

    @property
    def best(self) -> int:
        """The most accurate LLM's index: QNC's reference."""
        return int(self.llm_acc.argmax())

    @property
    def cost_range(self) -> tuple[float, float]:
        """[cheapest, priciest] LLM of the pool on the test prompts: the range AUDC is measured over."""
        return float(self.llm_cost.min()), float(self.llm_cost.max())

    def metrics(self, validation_cost: np.ndarray) -> dict[str, float]:
        """The version's metrics, named by split and unit; QNC may be inf (no budget reaches the best LLM)."""
        return {
            "test_audc": self.audc,
            "test_zero_router_audc": self.zero_audc,
            "test_audc_gain_vs_zero_router": self.audc - self.zero_audc,
            "test_qnc_fraction_of_best_cost": self.qnc,
            "test_zero_router_qnc_fraction_of_best_cost": self.zero_qnc,
            "test_accuracy_at_default_cost_weight": self.accuracy_at_default,
            "test_mean_cost_usd_per_query_at_default_cost_weight": self.cost_at_default,
            "test_best_llm_accuracy": float(self.llm_acc[self.best]),
            "test_best_llm_cost_usd_per_query": float(self.llm_cost[self.best]),
            "validation_cheapest_llm_cost_usd_per_query": float(validation_cost.min()),
            "validation_priciest_llm_cost_usd_per_query": float(validation_cost.max()),
        }

    def no_qnc(self, pool: Sequence[str]) -> str:
        """Why QNC has no value: what it would have had to reach."""
        best, accuracy, cost = pool[self.best], self.llm_acc[self.best], self.llm_cost[self.best]
        if not cost > 0:
            return f"the most accurate LLM ({best}) costs nothing: no fraction of its cost to report"
        return f"no budget on the test deferral curve reaches the most accurate LLM ({best}, accuracy {accuracy:.4f})"


def score_router(
    uni: UniRouter,
    zero: ZeroRouter,
    x_test: np.ndarray,
    test_scores: np.ndarray,
    realised: np.ndarray,
    default_cost_weight: float,
) -> RouterScores:
    """Both routers' deferral curves, AUDC and QNC on the test prompts (``realised``: each answer's cost), each
    LLM alone, and UniRoute's choices at ``default_cost_weight``."""
    audc, qnc, curve = evaluate_router(uni, x_test, test_scores, realised)
    zero_audc, zero_qnc, zero_curve = evaluate_router(zero, x_test, test_scores, realised)
    llm_cost, llm_acc = single_llm_points(test_scores, uni.costs_, realised)
    chosen = choose(uni.predict_error(x_test), uni.costs_, default_cost_weight)
    rows = np.arange(len(chosen))
    return RouterScores(
        audc=audc,
        qnc=qnc,
        curve=curve,
        zero_audc=zero_audc,
        zero_qnc=zero_qnc,
        zero_curve=zero_curve,
        llm_cost=llm_cost,
        llm_acc=llm_acc,
        chosen=chosen,
        accuracy_at_default=float(test_scores[rows, chosen].mean()),
        cost_at_default=float(realised[rows, chosen].mean()),
    )


@dataclass(frozen=True)
class PoolFit:
    """A pool fitted and scored (:func:`fit_pool`): the router, each LLM's mean validation ``cost``, the validation
    errors (n, M; NaN: not answered), the cross-fitted validation predictions and true scores of the prompts the
    whole pool answered, the default operating point, the test prompts scored (``test_ids``, their vectors,
    scores and realised costs) and the scores."""

    router: UniRouter
    pool: list[str]
    cost: np.ndarray
    val_errors: np.ndarray
    predicted: np.ndarray
    val_scores: np.ndarray
    point: OperatingPoint
    test_ids: np.ndarray
    x_test: np.ndarray
    test_scores: np.ndarray
    realised: np.ndarray
    per_query_test_costs: bool
    scores: RouterScores


def fit_pool(
    cluster_map: ClusterMap,
    pool: Sequence[str],
    costs: Mapping[str, float],
    val_ids: Sequence[str],
    x_val: np.ndarray,
    val_outcomes: pl.DataFrame,
    test_ids: Sequence[str],
    x_test: np.ndarray,
    test_outcomes: pl.DataFrame,
    test_query_costs: pl.DataFrame | None = None,
    default_cost_weight: float | None = None,
    stored_psi: Mapping[str, np.ndarray] | None = None,
    traffic: TrafficErrorStats | None = None,
    estimated: Collection[str] = (),
) -> PoolFit:
    """UniRoute over ``pool`` with ``cluster_map``, fitted on the validation outcomes (``prompt_id, model,
    score``) and scored on the test prompts every LLM answered, each answer at its own cost where
    ``test_query_costs`` (``prompt_id, model, cost``) has it, else the LLM's mean validation cost (``costs``).

    The default operating point is ``default_cost_weight``, else the cheapest point of the cross-fitted validation
    curve near its best accuracy. ``stored_psi`` (the features stored for each LLM) must equal the router's Psi:
    features stale against their grades are a :class:`RouterInputError` rather than a router nobody can inspect;
    ``estimated`` LLMs (partial profiles, whose features an estimator learned from other LLMs too) need features
    stored, and the router serves those (:meth:`UniRouter.use_features`), not the mean of their answers.
    ``traffic`` (outcomes on traffic routed with ``cluster_map``) blends each LLM's Psi with them
    (:meth:`UniRouter.use_traffic`) after that check, so the operating point and the scores are the blended router's.
    """
    pool = list(pool)
    val_errors = error_matrix(val_outcomes, val_ids, pool)
    test_scores = 1 - error_matrix(test_outcomes, test_ids, pool)
    empty = pl.DataFrame(schema={"prompt_id": pl.String, "model": pl.String, "cost": pl.Float64})
    test_costs = value_matrix(test_query_costs if test_query_costs is not None else empty, test_ids, pool, "cost")
    complete = ~np.isnan(test_scores).any(axis=1)
    if not complete.any():
        raise RouterInputError("pool", pool, "no test prompt answered by the whole pool: profile it on the test split")
    cost = np.array([costs[m] for m in pool])
    # each test answer's own cost where the data has it, else the LLM's mean validation cost
    realised = np.where(np.isnan(test_costs[complete]), cost, test_costs[complete])
    uni = UniRouter(cluster_map).fit_arrays(x_val, val_errors, pool, cost, val_ids)
    if estimated and stored_psi is None:
        raise RouterInputError("estimated", list(estimated), "needs stored_psi: the features the router serves")
    if stored_psi is not None:
        _check_psi(uni, stored_psi, set(estimated))
        uni.use_features({m: stored_psi[m] for m in estimated})
    if traffic is not None:
        uni.use_traffic(traffic)
    zero = ZeroRouter().fit_arrays(x_val, val_errors, pool, cost, val_ids)
    # the default operating point resolves on the pool's validation curve, cross-fitted so that it describes
    # prompts the router has not seen
    answered = ~np.isnan(val_errors).any(axis=1)
    folds = min(5, len(x_val))  # a small validation set: fewer folds; one prompt: nothing to hold out
    predicted = out_of_fold_errors(uni, x_val, val_errors, folds) if folds >= 2 else uni.predict_error(x_val)
    predicted, val_scores = predicted[answered], 1 - val_errors[answered]
    point = operating_point(predicted, uni.costs_, val_scores, default_cost_weight)
    x_scored, scores_scored = x_test[complete], test_scores[complete]
    return PoolFit(
        router=uni,
        pool=pool,
        cost=cost,
        val_errors=val_errors,
        predicted=predicted,
        val_scores=val_scores,
        point=point,
        test_ids=np.asarray(test_ids)[complete],
        x_test=x_scored,
        test_scores=scores_scored,
        realised=realised,
        per_query_test_costs=not np.isnan(test_costs[complete]).all(),
        scores=score_router(uni, zero, x_scored, scores_scored, realised, point.cost_weight),
    )


def _check_psi(uni: UniRouter, stored: Mapping[str, np.ndarray], estimated: set[str]) -> None:
    """The router's Psi must be the features stored for its LLMs: grades that changed since make them stale (or
    none stored), and the router waits for the features to follow."""
    stale = [
        m
        for j, m in enumerate(uni.llms_)
        if m not in stored
        or (m not in estimated and not np.allclose(uni.psi_[j], stored[m], atol=1e-9, equal_nan=True))
    ]
    if stale:
        raise RouterInputError(
            "llm_error_features",
            stale,
            f"stored features of {stale} differ from their current grades: re-materialise llm_error_features for "
            "them (automation does once their grades' checks pass), then the router",
        )
