"""Psi blended with traffic outcomes, the features/held-out split and the held-out comparison."""

from __future__ import annotations

import copy
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from router_core import (
    DEFAULT_CHANGE_ALPHA,
    KMeansClusterMap,
    RouterInputError,
    TrafficErrorStats,
    UniRouter,
    blend_traffic_features,
    compare_on_traffic,
    drop_before_changes,
    load_router,
    save_router,
    selective_traffic,
    split_traffic_outcomes,
    traffic_change_share,
    traffic_changed_cells,
    traffic_error_stats,
    traffic_prediction_loss,
    validation_counts,
)


def _champion(data) -> UniRouter:
    cmap = KMeansClusterMap(2, seed=0).fit(data.train)
    return UniRouter(cmap).fit_arrays(data.validation, data.error_matrix("validation"), data.llms, data.costs)


def _outcomes(weights: np.ndarray, served: list[str] | np.ndarray, errors: np.ndarray, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_id": [f"req-{start + i}" for i in range(len(errors))],
            "chosen_llm": list(served),
            "cluster_weights": weights.tolist(),
            "score": 1.0 - np.asarray(errors, dtype=np.float64),
        },
        schema_overrides={"cluster_weights": pl.List(pl.Float64)},
    )


def _copy(router: UniRouter, tmp_path, name: str) -> UniRouter:
    return load_router(save_router(router, tmp_path / name))


def _a_cluster(router: UniRouter, data) -> int:
    """The cluster of topic 0, where A is always right on validation."""
    return int(router.cluster_weights(data.validation[data.validation_topic == 0]).mean(0).argmax())


@pytest.mark.parametrize("temperature", [None, 0.5])
def test_no_outcomes_reproduce_the_validation_psi_exactly(two_topics, temperature):
    cmap = KMeansClusterMap(2, seed=0, temperature=temperature).fit(two_topics.train)
    router = UniRouter(cmap, shrinkage=1.7).fit_arrays(
        two_topics.validation, two_topics.error_matrix("validation"), two_topics.llms, two_topics.costs
    )
    validation_psi = router.psi_.copy()
    empty = _outcomes(np.zeros((0, 2)), [], np.zeros(0))
    router.use_traffic(traffic_error_stats(empty, router.llms_, 2))
    assert np.array_equal(router.psi_, validation_psi)
    other = _outcomes(np.array([[1.0, 0.0]]), ["gone"], np.array([1.0]))  # an LLM no longer in the pool
    router.use_traffic(traffic_error_stats(other, router.llms_, 2))
    assert np.array_equal(router.psi_, validation_psi)


def test_many_outcomes_of_a_change_set_validation_aside_and_few_barely_move(two_topics):
    router = _champion(two_topics)
    k = _a_cluster(router, two_topics)
    a = router.llms_.index("A")
    n_val = int((router.validation_assignments_[:, k] == 1).sum())
    assert router.psi_[a, k] == 0.0 and n_val > 20
    validation_psi = router.psi_.copy()
    onehot = np.eye(2)[[k]]
    one = traffic_error_stats(_outcomes(onehot, ["A"], np.ones(1)), router.llms_, 2)
    assert router.use_traffic(one).psi_[a, k] == pytest.approx(1 / (n_val + 1), rel=1e-12)  # within noise: blended
    stats = traffic_error_stats(_outcomes(np.repeat(onehot, 3000, 0), ["A"] * 3000, np.ones(3000)), router.llms_, 2)
    psi = router.use_traffic(stats).psi_
    assert psi[a, k] > 0.9999  # a change: validation is stale there (a precision blend stopped at 3000 / (n + 3000))
    assert psi[a, 1 - k] == 1.0 and np.array_equal(np.delete(psi, a, 0), np.delete(validation_psi, a, 0))


def _stats(errors: np.ndarray, counts: np.ndarray) -> TrafficErrorStats:
    """One-hot traffic statistics of one LLM: ``counts[k]`` outcomes in cluster k with mean error ``errors[k]``."""
    counts = np.asarray(counts, dtype=np.float64)[None, :]
    return TrafficErrorStats(("m",), counts, counts * np.asarray(errors)[None, :], counts)


def test_traffic_within_noise_and_the_winners_curse_is_blended_by_precision():
    psi, counts = np.array([[0.30, 0.20]]), np.array([[30.0, 30.0]])
    # 0.40 over 40 outcomes against 0.30 over 30 prompts (one SE of winner's curse and ~0.6 SE of noise): no change,
    # so both estimate the same error and the cell is their precision-weighted mean
    blended = blend_traffic_features(psi, counts, _stats([0.40, 0.15], [40, 40]))
    assert np.allclose(blended, psi + 40 / 70 * (np.array([[0.40, 0.15]]) - psi), rtol=1e-12)


def test_a_change_beyond_noise_sets_validation_aside_with_its_own_variance():
    psi, counts = np.array([[0.30, 0.20]]), np.array([[60.0, 60.0]])
    stats = _stats([0.90, 0.20], [40, 40])
    share = traffic_change_share(psi, counts, stats)
    p = (40 * 0.9 + 60 * 0.3 + 1) / 102
    s_v2, s_t2 = p * (1 - p) / 60, p * (1 - p) / 40
    sigma2 = 0.6**2 - s_v2 - s_t2
    assert share[0, 0] == pytest.approx((sigma2 + s_v2) / (sigma2 + s_v2 + s_t2), rel=1e-12)
    assert share[0, 1] == 40 / 100  # unchanged: precision-weighted
    blended = blend_traffic_features(psi, counts, stats)
    assert blended[0, 0] > 0.88 and blended[0, 1] == 0.2  # the precision blend alone: 0.3 + 0.6 * 40 / 100 = 0.54
    better = blend_traffic_features(psi, counts, _stats([0.0, 0.2], [200, 40]))  # an LLM may also get better
    assert better[0, 0] < 0.01 and better[0, 1] == 0.2


def test_an_unchanged_pool_sets_validation_aside_in_no_cell_in_all_but_alpha_of_runs():
    rng = np.random.default_rng(7)
    runs, changed = 300, 0
    truth = rng.uniform(0.05, 0.6, size=(10, 8))  # 10 LLMs x 8 clusters, all served
    for _ in range(runs):
        n = rng.integers(10, 60, size=truth.shape).astype(float)
        m = rng.integers(5, 80, size=truth.shape).astype(float)
        psi = rng.binomial(n.astype(int), truth) / n
        stats = TrafficErrorStats(tuple(f"llm{i}" for i in range(10)), m, rng.binomial(m.astype(int), truth), m)
        changed += traffic_changed_cells(psi, n, stats).any()
    assert changed / runs <= DEFAULT_CHANGE_ALPHA  # Bonferroni over the 80 cells (and exact tails): at most alpha
    with pytest.raises(RouterInputError, match=r"^alpha=0: must be in \(0, 1\)"):
        traffic_change_share(psi, n, stats, alpha=0)


def test_a_pool_drifting_beyond_noise_trusts_validation_less_in_every_cell():
    n = np.full((1, 6), 50.0)
    m = np.full((1, 6), 30.0)
    psi = np.full((1, 6), 0.3)
    agreeing = TrafficErrorStats(("m",), m, m * np.array([[0.33, 0.28, 0.36, 0.30, 0.27, 0.34]]), m)
    assert np.allclose(traffic_change_share(psi, n, agreeing), 30 / 80, rtol=1e-12)  # no drift: precision weights
    # every cell off by ~0.12 either way (3 of 6 up, beyond one SE each, none a change on its own): validation is
    # off by more than its noise, so traffic counts for more everywhere than its precision alone says
    drifting = TrafficErrorStats(("m",), m, m * np.array([[0.45, 0.18, 0.45, 0.18, 0.45, 0.30]]), m)
    assert not traffic_changed_cells(psi, n, drifting).any()
    share = traffic_change_share(psi, n, drifting)
    assert (share > 30 / 80 + 0.1).all() and np.allclose(share, share[0, 0], rtol=0.2)
    few = TrafficErrorStats(("m",), m[:, :2], m[:, :2] * np.array([[0.45, 0.18]]), m[:, :2])
    assert np.allclose(traffic_change_share(psi[:, :2], n[:, :2], few), 30 / 80)  # 2 cells: no drift estimate


def test_soft_weights_accumulate_weighted_sums_with_effective_counts():
    psi = np.array([[0.2, 0.4]])
    counts = np.array([[10.0, 5.0]])
    weights = np.tile(np.array([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]), (100, 1))
    errors = np.tile(np.array([1.0, 1.0, 1.0]), 100)
    stats = traffic_error_stats(_outcomes(weights, ["m"] * 300, errors), ["m"], 2, weight=0.5)
    mass, total, square = weights.sum(0), weights.T @ errors, (weights**2).sum(0)
    assert np.allclose(stats.counts[0], 0.5 * mass**2 / square) and np.allclose(stats.observed_error, total / mass)
    share = traffic_change_share(psi, counts, stats)
    assert (share > 0.9).all()  # every answer wrong: both clusters changed
    assert np.allclose(blend_traffic_features(psi, counts, stats), psi + share * (1.0 - psi), rtol=1e-12)


def test_validation_counts_follow_shrinkage_and_missing_outcomes():
    weights = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    errors = np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 0.0]])
    assert np.allclose(
        validation_counts(weights, errors, shrinkage=2.0), [[1.5**2 / 1.25 + 2, 3.0], [2.5**2 / 2.25 + 2, 3.0]]
    )


def test_a_degraded_llm_raises_its_blended_error_and_the_held_out_metric_prefers_the_blend(two_topics, tmp_path):
    champion = _champion(two_topics)
    k = _a_cluster(champion, two_topics)
    rng = np.random.default_rng(1)
    x = two_topics.test[rng.integers(0, len(two_topics.test), size=1500)]
    served = champion.route(x, cost_weight=0.0)
    weights = champion.cluster_weights(x)
    on_a_topic = (served == "A") & (weights[:, k] == 1)
    assert on_a_topic.sum() > 500
    errors = np.where(on_a_topic, rng.uniform(size=len(x)) < 0.6, 0.0)  # A silently got worse on its topic
    features, heldout = split_traffic_outcomes(_outcomes(weights, served, errors), heldout_fraction=0.3)
    assert 0.25 < heldout.height / 1500 < 0.35
    challenger = _copy(champion, tmp_path, "challenger").use_traffic(traffic_error_stats(features, champion.llms_, 2))
    a = champion.llms_.index("A")
    assert champion.psi_[a, k] == 0.0 and 0.55 < challenger.psi_[a, k] < 0.65
    assert (challenger.route(two_topics.test[two_topics.test_topic == 0], 0.0) == "C").all()  # C errs only half
    comparison = compare_on_traffic(champion, challenger, heldout)
    assert comparison.n == heldout.height and comparison.n_skipped == 0
    assert comparison.difference < -0.1 and comparison.difference < -3 * comparison.standard_error
    assert comparison.not_worse()
    assert comparison.reason().startswith(f"challenger is not worse on {heldout.height} held-out traffic outcomes")
    backwards = compare_on_traffic(challenger, champion, heldout, metric="log_loss")
    assert not backwards.not_worse(tolerance=0.01, z=3.0) and backwards.difference > 1.0


def test_without_degradation_the_blend_is_not_worse(two_topics, tmp_path):
    champion = _champion(two_topics)
    rng = np.random.default_rng(2)
    x = two_topics.test[rng.integers(0, len(two_topics.test), size=800)]
    served = champion.route(x, cost_weight=0.0)
    outcomes = _outcomes(champion.cluster_weights(x), served, np.zeros(len(x)))  # A and B right, as validated
    features, heldout = split_traffic_outcomes(outcomes)
    challenger = _copy(champion, tmp_path, "c").use_traffic(traffic_error_stats(features, champion.llms_, 2))
    comparison = compare_on_traffic(champion, challenger, heldout)
    assert comparison.not_worse() and comparison.difference == 0.0
    assert np.array_equal(challenger.psi_, champion.psi_)


def test_selective_traffic_moves_only_changed_and_confirmed_cells(two_topics):
    """Noise-level traffic everywhere leaves Psi as validated; a cell traffic shows changed moves, and so does a
    cell named as confirmed (asked again) whose traffic alone proves nothing."""
    champion = _champion(two_topics)
    k = _a_cluster(champion, two_topics)
    a, other = champion.llms_.index("A"), 1 - k
    rng = np.random.default_rng(3)
    x = two_topics.test[rng.integers(0, len(two_topics.test), size=1500)]
    served, weights = rng.choice(champion.llms_, size=len(x)), champion.cluster_weights(x)  # every cell rated
    on_a_topic = (served == "A") & (weights[:, k] == 1)
    truth = champion.psi_[[champion.llms_.index(s) for s in served], weights.argmax(1)]
    errors = np.where(on_a_topic, rng.uniform(size=len(x)) < 0.6, rng.uniform(size=len(x)) < truth)
    stats = traffic_error_stats(_outcomes(weights, served, errors), champion.llms_, 2)
    everywhere = champion.psi_ != copy.deepcopy(champion).use_traffic(stats).psi_
    assert everywhere.sum() > 1  # blending every cell moves unchanged cells too
    kept = selective_traffic(champion, stats)
    moved = champion.psi_ != copy.deepcopy(champion).use_traffic(kept).psi_
    assert moved[a, k] and moved.sum() == 1
    confirmed = selective_traffic(champion, stats, confirmed=[("A", other)])
    assert confirmed.mass[a, other] == stats.mass[a, other] > 0 and kept.mass[a, other] == 0
    quiet = traffic_error_stats(_outcomes(weights, served, rng.uniform(size=len(x)) < truth), champion.llms_, 2)
    assert np.array_equal(copy.deepcopy(champion).use_traffic(selective_traffic(champion, quiet)).psi_, champion.psi_)


def test_outcomes_before_a_confirmed_change_are_dropped():
    at = [datetime(2026, 12, 1, h) for h in (1, 2, 3, 4)]
    outcomes = _outcomes(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), ["A", "A", "A", "B"], np.zeros(4))
    outcomes = outcomes.with_columns(decided_at=pl.Series(at))
    changes = pl.DataFrame({"llm": ["A"], "cluster": [0], "checked_at": [datetime(2026, 12, 1, 2)]})
    kept = drop_before_changes(outcomes, changes)
    assert kept["request_id"].to_list() == ["req-1", "req-2", "req-3"]  # A's cluster-1 and B's stay
    assert kept.columns == outcomes.columns
    with pytest.raises(RouterInputError, match="decided_at"):
        drop_before_changes(outcomes.drop("decided_at"), changes)


def test_the_blended_router_survives_save_load_and_pool_changes(two_topics, tmp_path):
    router = _champion(two_topics)
    k = _a_cluster(router, two_topics)
    n = 50
    outcomes = _outcomes(np.repeat(np.eye(2)[[k]], n, 0), ["A"] * n, np.ones(n))
    router.use_traffic(traffic_error_stats(outcomes, router.llms_, 2))
    loaded = _copy(router, tmp_path, "saved")
    assert np.array_equal(loaded.psi_, router.psi_)
    assert np.array_equal(loaded.predict_error(two_topics.test), router.predict_error(two_topics.test))
    blended_a = router.psi_[0].copy()
    loaded.add_llm("D", two_topics.errors(two_topics.validation_topic, "D"), cost=0.5)
    assert np.array_equal(loaded.psi_[0], blended_a) and np.array_equal(loaded.psi_[-1], [0.0, 0.0])
    loaded.remove_llm("B")
    assert np.array_equal(loaded.psi_[0], blended_a)
    assert not np.array_equal(loaded.use_traffic(None).psi_[0], blended_a)  # back to validation only


def test_split_is_stable_by_request_id():
    outcomes = _outcomes(np.tile([[1.0, 0.0]], (2000, 1)), ["A"] * 2000, np.zeros(2000))
    features, heldout = split_traffic_outcomes(outcomes, 0.2)
    assert features.height + heldout.height == 2000 and 340 < heldout.height < 460
    later = pl.concat([outcomes, _outcomes(np.tile([[1.0, 0.0]], (500, 1)), ["A"] * 500, np.ones(500), 2000)])
    _, heldout_later = split_traffic_outcomes(later.reverse(), 0.2)
    assert set(heldout["request_id"]) == set(heldout_later["request_id"]) & set(outcomes["request_id"])
    _, other_salt = split_traffic_outcomes(outcomes, 0.2, salt="another")
    assert set(other_salt["request_id"]) != set(heldout["request_id"])


def test_prediction_loss_scores_the_served_llm():
    psi = np.array([[0.1, 0.9], [0.5, 0.5]])
    outcomes = _outcomes(np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]), ["a", "b", "zz"], np.array([0.0, 1.0, 1.0]))
    loss = traffic_prediction_loss(psi, ["a", "b"], outcomes)
    assert np.allclose(loss[:2], [0.01, 0.25]) and np.isnan(loss[2])
    log_loss = traffic_prediction_loss(psi, ["a", "b"], outcomes, metric="log_loss")
    assert np.allclose(log_loss[:2], [-np.log(0.9), -np.log(0.5)])


def test_bad_traffic_outcomes_are_named():
    good = _outcomes(np.array([[1.0, 0.0]]), ["a"], np.array([0.0]))
    with pytest.raises(RouterInputError, match=r"^score=1\.5: must be in \[0, 1\] \(request_id='req-0'\)"):
        traffic_error_stats(good.with_columns(pl.lit(1.5).alias("score")), ["a"], 2)
    with pytest.raises(RouterInputError, match=r"^cluster_weights=2: needs 3 weights \(request_id='req-0'"):
        traffic_error_stats(good, ["a"], 3)
    with pytest.raises(RouterInputError, match=r"^outcomes.columns=.*missing column\(s\) \['score'\]"):
        traffic_error_stats(good.drop("score"), ["a"], 2)
    stats = TrafficErrorStats(("a",), np.ones((1, 3)), np.ones((1, 3)), np.ones((1, 3)))
    with pytest.raises(RouterInputError, match=r"^psi=\(1, 2\)"):
        blend_traffic_features(np.zeros((1, 2)), np.ones((1, 2)), stats)


def test_fit_pool_with_traffic_blends_after_the_stale_features_check_and_cross_fits_with_it(two_topics):
    from router_core import fit_pool

    cmap = KMeansClusterMap(2, seed=0).fit(two_topics.train)
    validation_only = _champion(two_topics)
    k = _a_cluster(validation_only, two_topics)
    n = 3000
    degraded = _outcomes(np.repeat(np.eye(2)[[k]], n, 0), ["A"] * n, (np.arange(n) % 5 < 3).astype(float))
    ids = {
        split: [f"{split}-{i}" for i in range(len(getattr(two_topics, f"{split}_topic")))]
        for split in ("validation", "test")
    }
    fit = fit_pool(
        cmap,
        two_topics.llms,
        dict(zip(two_topics.llms, two_topics.costs, strict=True)),
        ids["validation"],
        two_topics.validation,
        two_topics.outcomes("validation"),
        ids["test"],
        two_topics.test,
        two_topics.outcomes("test"),
        stored_psi=dict(zip(validation_only.llms_, validation_only.psi_, strict=True)),  # validation-only features
        traffic=traffic_error_stats(degraded, two_topics.llms, 2),
    )
    a = fit.pool.index("A")
    assert 0.58 < fit.router.psi_[a, k] < 0.6  # 0.6 observed on 3000 outcomes, 0 on the validation prompts
    on_topic = two_topics.validation_topic[~np.isnan(fit.val_errors).any(axis=1)] == 0
    assert (fit.predicted[on_topic, a] > 0.55).all()  # every cross-fitted copy kept the traffic
