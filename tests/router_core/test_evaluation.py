from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from router_core import (
    KMeansClusterMap,
    KNNRouter,
    LearnedClusterMap,
    OracleRouter,
    RandomRouter,
    UniRouter,
    ZeroRouter,
    audc,
    concave_hull,
    deferral_curve,
    plot_deferral_curves,
    qnc,
)


def _curve(points):
    return pl.DataFrame(points, schema=["cost", "accuracy"], orient="row")


def test_hull_drops_points_under_the_chord_and_is_flat_after_the_peak():
    curve = _curve([(1, 0.2), (2, 0.3), (3, 0.6), (4, 0.5), (3, 0.4)])
    hull = concave_hull(curve)
    assert hull.rows() == [(1.0, 0.2), (3.0, 0.6)]
    assert audc(curve, (1, 5)) == pytest.approx(((0.2 + 0.6) / 2 * 2 + 0.6 * 2) / 4)


def test_audc_holds_the_first_point_left_of_it():
    assert audc(_curve([(2, 0.5), (4, 0.7)]), (0, 4)) == pytest.approx((0.5 * 2 + 0.6 * 2) / 4)


def test_qnc_interpolates_on_the_hull_and_is_inf_when_never_reached():
    curve = _curve([(1, 0.2), (3, 0.6)])
    assert qnc(curve, 0.4, reference_cost=4.0) == pytest.approx(2 / 4)
    assert qnc(curve, 0.7, reference_cost=4.0) == float("inf")


def test_deferral_curve_endpoints():
    scores = np.array([[1.0, 0.0], [1.0, 1.0]])
    predicted = 1 - scores
    curve = deferral_curve(predicted, np.array([2.0, 1.0]), scores, cost_weights=[0.0, np.inf])
    assert curve.rows() == [(0.0, 1.5, 1.0), (np.inf, 1.0, 0.5)]


def test_oracle_bounds_every_router(two_topics):
    data = two_topics
    truth = 1 - data.error_matrix("test")
    val = (data.validation, data.error_matrix("validation"), data.llms, data.costs)
    routers = {
        "zero": ZeroRouter().fit_arrays(*val),
        "random": RandomRouter(0).fit_arrays(*val),
        "knn": KNNRouter(5).fit_arrays(*val),
        "kmeans": UniRouter(KMeansClusterMap(2).fit(data.train)).fit_arrays(*val),
        "learned": UniRouter(LearnedClusterMap(2).fit(data.train, data.error_matrix("train"))).fit_arrays(*val),
    }
    oracle = OracleRouter().fit_arrays(data.test, 1 - truth, data.llms, data.costs)
    costs = np.array(data.costs)

    def area(router) -> float:
        return audc(deferral_curve(router.predict_error(data.test), costs, truth), (costs.min(), costs.max()))

    best = area(oracle)
    areas = {name: area(r) for name, r in routers.items()}
    assert all(a <= best + 1e-12 for a in areas.values()), areas
    assert areas["kmeans"] > areas["zero"] + 0.2  # topics are perfectly separable here
    fig = plot_deferral_curves({"oracle": deferral_curve(oracle.predict_error(data.test), costs, truth)})
    assert fig.axes[0].get_lines()


def test_a_budget_is_met_on_average_by_mixing_the_two_operating_points_around_it(two_topics):
    from router_core import RouterInputError, budget_mix, choose

    data = two_topics
    router = UniRouter(KMeansClusterMap(n_clusters=2).fit(data.train)).fit_arrays(
        data.validation, data.error_matrix("validation"), data.llms, np.array(data.costs)
    )
    curve = deferral_curve(router.predict_error(data.validation), router.costs_, 1 - data.error_matrix("validation"))
    # The curve's own prompts twenty times under distinct keys: what the hash mixing realises (on new prompts
    # the curve's own error adds to it; benchmarks/budgets.py measures that on MMLU-Pro's test prompts)
    x = np.tile(data.validation, (20, 1))
    scores = np.tile(1 - data.error_matrix("validation"), (20, 1))
    keys = [f"prompt {i}" for i in range(len(x))]

    def realised(mix):
        weights = mix.cost_weights(keys)
        chosen = np.empty(len(x), dtype=int)
        for weight in np.unique(weights):
            rows = weights == weight
            chosen[rows] = choose(router.predict_error(x[rows]), router.costs_, weight)
        rows = np.arange(len(x))
        return router.costs_[chosen].mean(), scores[rows, chosen].mean()

    for budget in (0.2, 0.55, 0.9):  # between the cheap LLM alone (0.1) and the two specialists (1.0)
        mix = budget_mix(curve, max_cost=budget)
        assert mix.low != mix.high and 0 < mix.high_share < 1 and np.isclose(mix.cost, budget)
        cost, _ = realised(mix)
        assert abs(cost - budget) <= 0.1 * budget
    mix = budget_mix(curve, min_accuracy=0.75)
    cost, accuracy = realised(mix)
    assert abs(accuracy - 0.75) <= 0.05 and cost < 1.0  # cheaper than always asking a specialist
    assert budget_mix(curve, max_cost=5.0).high_share == 0  # more than the best point needs: the best point
    with pytest.raises(RouterInputError, match="max_cost_per_query"):
        budget_mix(curve, max_cost=0.01)
    with pytest.raises(RouterInputError, match="min_accuracy"):
        budget_mix(curve, min_accuracy=1.01)
    with pytest.raises(RouterInputError, match="exactly one"):
        budget_mix(curve, max_cost=0.5, min_accuracy=0.5)


def test_out_of_fold_errors_predict_each_prompt_without_it(two_topics):
    from router_core import RouterInputError, out_of_fold_errors

    data = two_topics
    errors = data.error_matrix("validation")
    router = UniRouter(KMeansClusterMap(n_clusters=2).fit(data.train)).fit_arrays(
        data.validation, errors, data.llms, np.array(data.costs)
    )
    in_sample = router.predict_error(data.validation)
    held_out = out_of_fold_errors(router, data.validation, errors, folds=5)
    assert held_out.shape == in_sample.shape and not np.allclose(held_out, in_sample)  # C's noise is not memorised
    assert np.allclose(held_out[:, :2], in_sample[:, :2])  # A and B are exact per topic: any fold agrees
    assert router.llms_ == data.llms and np.allclose(router.predict_error(data.validation), in_sample)  # untouched
    with pytest.raises(RouterInputError, match="folds"):
        out_of_fold_errors(router, data.validation, errors, folds=1)


def _topics(n: int = 90) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three topics of n/3 prompts; LLMs: ``tiny`` (0.1, right on a third of each topic), ``pro`` (4.0, right on
    topic 0 only), ``big`` (5.0, right everywhere). Scores (n, 3), costs (3,), and what a cluster router
    predicts: each LLM's error rate on the prompt's topic."""
    topic = np.arange(n) % 3
    tiny = (np.arange(n) // 3) % 3 == 0
    scores = np.column_stack([tiny, topic == 0, np.ones(n, bool)]).astype(float)
    predicted = np.vstack([1 - scores[topic == t].mean(axis=0) for t in range(3)])[topic]
    return scores, np.array([0.1, 4.0, 5.0]), predicted


def test_a_pool_that_adds_a_cheaper_llm_is_compared_over_the_budgets_both_reach():
    from router_core import compare_curves

    scores, costs, predicted = _topics()
    old = deferral_curve(predicted[:, 1:], costs[1:], scores[:, 1:])  # pro and big
    new = deferral_curve(predicted, costs, scores)  # tiny joins
    old_range, new_range = (4.0, 5.0), (0.1, 5.0)
    # the precondition: over their own ranges the new pool's AUDC is lower (its range reaches down to tiny's 0.1)
    assert audc(new, new_range) < audc(old, old_range) - 0.05
    comparison = compare_curves(new, old, new_range, old_range)
    assert (comparison.low, comparison.high) == (4.0, 5.0)
    assert comparison.candidate_audc == pytest.approx(audc(new, (4.0, 5.0)))
    assert comparison.reference_audc == pytest.approx(audc(old, old_range))
    assert comparison.audc_gap > 0.05 and comparison.worst_gap >= 0  # better at every budget both reach
    # and the other way round: the old pool is worse, by as much, somewhere
    backwards = compare_curves(old, new, old_range, new_range)
    assert backwards.audc_gap == pytest.approx(-comparison.audc_gap) and backwards.worst_gap < -0.05
    assert 4.0 <= backwards.worst_gap_cost <= 5.0


def test_curves_that_share_one_budget_compare_there_and_none_is_refused():
    from router_core import RouterInputError, compare_curves

    a = pl.DataFrame({"cost": [1.0, 2.0], "accuracy": [0.4, 0.6]})
    b = pl.DataFrame({"cost": [2.0, 3.0], "accuracy": [0.5, 0.9]})
    point = compare_curves(a, b)  # ranges (1, 2) and (2, 3): only 2 is common
    assert (point.low, point.high, point.candidate_audc, point.reference_audc) == (2.0, 2.0, 0.6, 0.5)
    assert point.worst_gap == pytest.approx(0.1) and point.worst_gap_cost == 2.0
    with pytest.raises(RouterInputError, match=r"cost_range=.*share no budget"):
        compare_curves(a, b, (1.0, 1.5), (2.0, 3.0))


def test_the_default_operating_point_is_the_cheapest_within_half_a_point_of_the_best():
    from router_core import default_operating_point, operating_point

    curve = pl.DataFrame(
        {
            "cost_weight": [0.0, 0.5, 1.0, 2.0, 5.0, np.inf],
            "cost": [3.0, 2.0, 1.2, 1.0, 0.5, 0.1],
            "accuracy": [0.800, 0.801, 0.797, 0.7965, 0.790, 0.5],
        }
    )
    point = default_operating_point(curve)
    # best 0.801; 0.797 and 0.7965 are within 0.005 of it, 0.790 is not: the cheapest of those is cost 1.0
    assert (point.cost_weight, point.cost, point.accuracy, point.best_accuracy) == (2.0, 1.0, 0.7965, 0.801)
    assert point.tolerance == 0.005
    assert default_operating_point(curve, tolerance=0.0).cost_weight == 0.5
    assert default_operating_point(curve, tolerance=0.5).cost_weight == np.inf  # everything to the cheapest

    # from arrays: "small" (1.0) is wrong on 3 of 1,000 prompts, "large" (10.0) on none
    scores = np.ones((1000, 2))
    scores[:3, 0] = 0
    predicted = np.broadcast_to([0.003, 0.0], scores.shape)
    auto = operating_point(predicted, np.array([1.0, 10.0]), scores)
    assert (auto.cost, auto.accuracy, auto.best_accuracy) == (1.0, 0.997, 1.0) and 0 < auto.cost_weight < np.inf
    given = operating_point(predicted, np.array([1.0, 10.0]), scores, cost_weight=0.0)
    assert (given.cost_weight, given.cost, given.accuracy, given.tolerance) == (0.0, 10.0, 1.0, None)


@pytest.mark.parametrize("n_validation", [1, 2, 4])
def test_fit_pool_scores_a_pool_with_fewer_validation_prompts_than_folds(two_topics, n_validation):
    """A small prompt set leaves a handful of validation prompts: the operating point is cross-fitted on fewer folds
    (in-sample with one prompt), not refused ("folds=5: must be in [2, 2]" stopped a 20-prompt dataset's router)."""
    from router_core import fit_pool

    cmap = KMeansClusterMap(2, seed=0).fit(two_topics.train)
    val_ids = [f"validation-{i}" for i in range(n_validation)]
    test_ids = [f"test-{i}" for i in range(len(two_topics.test_topic))]
    fit = fit_pool(
        cmap,
        two_topics.llms,
        dict(zip(two_topics.llms, two_topics.costs, strict=True)),
        val_ids,
        two_topics.validation[:n_validation],
        two_topics.outcomes("validation").filter(pl.col("prompt_id").is_in(val_ids)),
        test_ids,
        two_topics.test,
        two_topics.outcomes("test"),
    )
    assert fit.predicted.shape == (n_validation, len(two_topics.llms)) and np.isfinite(fit.predicted).all()
    assert np.isfinite(fit.scores.audc)
