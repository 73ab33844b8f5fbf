"""Onboarding a new LLM from part of the validation set: prompt orders and Psi from a partial profile."""

from __future__ import annotations

import numpy as np
import pytest

from router_core import (
    ESTIMATORS,
    ORDERS,
    NotFittedError,
    OnboardingPlanner,
    PartialProfileEstimator,
    RouterInputError,
    llm_error_features,
)
from router_core.onboarding import _routing_loss


def population(seed: int = 0, n: int = 480, k: int = 8, known: int = 16, new: int = 12, quirk: float = 0.0):
    """Hard cluster weights (n, K) and 0/1 errors of a low-rank population: each LLM is an overall skill plus a
    mix of two specialisms (clusters 0-3 vs 4-7), each prompt a difficulty; ``quirk`` > 0 adds each LLM its own
    offset per cluster (sd ``quirk`` on the logit scale), which no known LLM predicts."""
    rng = np.random.default_rng(seed)
    home = rng.integers(0, k, size=n)
    weights = np.eye(k)[home]
    specialism = np.where(np.arange(k) < k // 2, 1.0, -1.0)
    skill = rng.normal(0, 0.7, size=known + new)
    tilt = rng.normal(0, 1.0, size=known + new)
    difficulty = rng.normal(0, 1.2, size=n)
    logits = difficulty[:, None] - skill[None, :] + specialism[home][:, None] * tilt[None, :]
    logits += rng.normal(0, quirk, size=(k, known + new))[home]
    errors = (rng.uniform(size=logits.shape) < 1 / (1 + np.exp(-logits))).astype(float)
    return weights, errors[:, :known], errors[:, known:]


def ask(errors: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """``errors`` with NaN where a prompt was not asked (``asked``: (n,) bool or indices)."""
    mask = np.zeros(errors.shape[0], dtype=bool)
    mask[asked] = True
    return np.where(mask[:, None] if errors.ndim == 2 else mask, errors, np.nan)


@pytest.mark.parametrize("method", ESTIMATORS)
@pytest.mark.parametrize("shrinkage", [0.0, 3.0])
def test_a_complete_profile_gives_exactly_todays_psi(method, shrinkage):
    weights, known, new = population()
    soft = 0.7 * weights + 0.3 / weights.shape[1]  # soft weights too
    for w in (weights, soft):
        estimator = PartialProfileEstimator(shrinkage, method=method).fit(w, known)
        profile = estimator.estimate(new)
        assert np.array_equal(profile.psi, llm_error_features(w, new, shrinkage))
        assert (profile.asked == new.shape[0]).all()
    # an LLM marked complete with prompts not collected also gets the plain mean of what it has
    gappy = new.copy()
    gappy[:5, 0] = np.nan
    flagged = estimator.estimate(gappy, complete=np.ones(new.shape[1], dtype=bool)).psi
    assert np.array_equal(flagged, llm_error_features(soft, gappy, shrinkage))
    assert not np.allclose(estimator.estimate(gappy).psi[0], flagged[0]) or method == "plain"


def test_on_a_low_rank_population_the_prior_beats_the_plain_mean():
    """10% asked at random: Psi from the low-rank prior is much closer to the full profile's than the plain mean
    of the asked prompts, and the difficulty-only prior is in between."""
    weights, known, new = population()
    full = llm_error_features(weights, new)
    rng = np.random.default_rng(1)
    partial = ask(new, rng.permutation(len(new))[: len(new) // 10])
    rmse = {}
    for method in ESTIMATORS:
        psi = PartialProfileEstimator(method=method).fit(weights, known).estimate(partial).psi
        rmse[method] = float(np.sqrt(np.mean((psi - full) ** 2)))
    assert rmse["lowrank"] < 0.75 * rmse["plain"], rmse
    assert rmse["lowrank"] < rmse["difficulty"] < rmse["plain"], rmse


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_cross_validated_shrinkage_adapts_to_how_much_the_known_llms_leave_unexplained(share):
    """The per-cluster correction's weight is chosen by leave-one-known-LLM-out: light where LLMs have quirks of
    their own per cluster (a fixed weight of 15 over-shrinks them), heavy where the known LLMs' structure explains
    everything; either way Psi is closer to the full profile's than with the fixed weight."""
    order = np.random.default_rng(1).permutation(480)
    for quirk, light in ((1.5, True), (0.0, False)):
        weights, known, new = population(quirk=quirk)
        full, partial = llm_error_features(weights, new), ask(new, order[: int(share * 480)])
        cv = PartialProfileEstimator(method="lowrank").fit(weights, known)
        fixed = PartialProfileEstimator(method="lowrank", cluster_weight=15.0).fit(weights, known)
        rmse = {
            name: float(np.sqrt(np.mean((estimator.estimate(partial).psi - full) ** 2)))
            for name, estimator in (("cv", cv), ("fixed", fixed))
        }
        assert rmse["cv"] < rmse["fixed"], (quirk, rmse)
        weight = cv._setting(~np.isnan(partial[:, 0])).cluster_weight
        assert (weight < 15) if light else (weight > 15), (quirk, weight)


def test_irt_chooses_how_far_a_cluster_strays_from_the_overall_ability_by_leave_one_out():
    """``irt``'s between-cluster ability variance follows the population: larger where each LLM has quirks of its
    own per cluster; either way its Psi is much closer to the full profile's than the asked prompts' mean."""
    asked = np.random.default_rng(1).permutation(480)[:48]
    chosen = {}
    for quirk in (0.0, 1.5):
        weights, known, new = population(quirk=quirk)
        full, partial = llm_error_features(weights, new), ask(new, asked)
        irt = PartialProfileEstimator(method="irt").fit(weights, known)
        plain = PartialProfileEstimator(method="plain").fit(weights, known)
        rmse = {
            name: float(np.sqrt(np.mean((estimator.estimate(partial).psi - full) ** 2)))
            for name, estimator in (("irt", irt), ("plain", plain))
        }
        assert rmse["irt"] < 0.75 * rmse["plain"], (quirk, rmse)
        chosen[quirk] = irt.irt_.tau2(~np.isnan(partial[:, 0]))
    assert chosen[1.5] > chosen[0.0], chosen


def test_irt_with_too_few_known_llms_to_cross_validate_uses_their_spread():
    weights, known, new = population(known=2)
    estimator = PartialProfileEstimator(method="irt").fit(weights, known)
    partial = ask(new, np.arange(0, 480, 10))
    assert estimator.irt_.tau2(~np.isnan(partial[:, 0])) == estimator.irt_.items.tau2
    profile = estimator.estimate(partial)
    assert np.isfinite(profile.psi).all() and np.isfinite(profile.standard_error).all()
    assert not np.array_equal(profile.psi, llm_error_features(weights, partial))


def test_a_partial_pool_is_judged_up_to_what_leaves_routing_unchanged():
    """Asked the same prompts, every LLM's Psi shifted per cluster and scaled alike routes the same: ``partial``
    does not count it, ``mixed`` (one new LLM among full profiles, where it does matter) does."""
    rng = np.random.default_rng(0)
    full, mass = rng.uniform(size=(6, 4)), rng.uniform(1, 5, size=4)
    alike = 0.5 * full + rng.normal(size=4)
    assert _routing_loss(alike, full, mass, "partial") == pytest.approx(0, abs=1e-12)
    assert _routing_loss(alike, full, mass, "mixed") > 0.1
    noisy = full + rng.normal(0, 0.1, size=full.shape)
    assert _routing_loss(noisy, full, mass, "partial") > 1e-3


@pytest.mark.parametrize("method", ["lowrank", "irt"])
def test_the_standard_error_shrinks_as_more_is_asked_and_covers_the_full_profile(method):
    weights, known, new = population()
    estimator = PartialProfileEstimator(method=method).fit(weights, known)
    plain = PartialProfileEstimator(method="plain").fit(weights, known)
    full = estimator.estimate(new)
    order = np.random.default_rng(2).permutation(len(new))
    previous = np.inf
    for share in (0.05, 0.2, 0.5):
        partial = ask(new, order[: int(share * len(new))])
        profile = estimator.estimate(partial)
        assert previous > profile.standard_error.mean() > full.standard_error.mean()
        previous = profile.standard_error.mean()
        assert profile.standard_error.mean() < plain.estimate(partial).standard_error.mean()  # the prior's worth
        assert np.mean(np.abs(profile.psi - full.psi) <= 2 * profile.standard_error) > 0.9


@pytest.mark.parametrize("method", [m for m in ORDERS if m != "adaptive"])
def test_orders_are_permutations_and_only_adaptive_reads_the_answers(method):
    weights, known, new = population()
    planner = OnboardingPlanner(method, random_state=3).fit(weights, known)
    order = planner.order()
    assert sorted(order.tolist()) == list(range(len(weights)))
    asked = order[:20]
    one = planner.next_prompts(asked, new[asked, 0], 10)
    other = planner.next_prompts(asked, 1 - new[asked, 0], 10)
    assert np.array_equal(one, order[20:30]) and np.array_equal(one, other)


def test_stratified_orders_keep_every_prefix_in_proportion_to_the_clusters():
    weights, known, _ = population()
    home = weights.argmax(axis=1)
    share = np.bincount(home) / len(home)
    for method in ("stratified", "discriminative"):
        order = OnboardingPlanner(method, random_state=4).fit(weights, known).order()
        for t in (8, 24, 48, 100, 240):
            counts = np.bincount(home[order[:t]], minlength=weights.shape[1])
            assert np.abs(counts - t * share).max() <= 2, (method, t, counts, t * share)
    random_order = OnboardingPlanner("random", random_state=4).fit(weights, known).order()
    counts = [np.bincount(home[random_order[:t]], minlength=8) for t in (8, 24, 48)]
    assert any(np.abs(c - t * share).max() > 2 for c, t in zip(counts, (8, 24, 48), strict=True))


def test_discriminative_asks_prompts_that_separate_the_known_llms_first():
    weights, known, _ = population()
    known = known.copy()
    agreed = np.flatnonzero(weights[:, 0] == 1)[:10]
    known[agreed] = 1.0  # every known LLM fails these: they tell nothing about a new one
    order = OnboardingPlanner("discriminative", random_state=0).fit(weights, known).order()
    cluster0 = [i for i in order if weights[i, 0] == 1]
    last_quarter = cluster0[-len(cluster0) // 4 :]
    assert set(agreed.tolist()) <= set(last_quarter)
    assert len(cluster0) > 40


def test_adaptive_picks_from_the_answers_and_never_repeats_a_prompt():
    weights, known, new = population()
    planner = OnboardingPlanner("adaptive", random_state=0).fit(weights, known)
    first = planner.next_prompts(np.array([], dtype=int), np.array([]), 24)
    assert np.array_equal(first, planner.order()[:24])
    good, bad = np.zeros(24), np.ones(24)
    after_good = planner.next_prompts(first, good, 24)
    after_bad = planner.next_prompts(first, bad, 24)
    assert not np.array_equal(after_good, after_bad)
    for picks in (after_good, after_bad):
        assert len(set(picks.tolist())) == 24 and not set(picks.tolist()) & set(first.tolist())
    # asked to the end, every prompt is asked exactly once
    asked = first
    while len(asked) < len(weights):
        asked = np.concatenate([asked, planner.next_prompts(asked, new[asked, 0], 100)])
    assert sorted(asked.tolist()) == list(range(len(weights)))
    assert len(planner.next_prompts(asked, new[asked, 0], 5)) == 0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda w, e: OnboardingPlanner("greedy"), "method"),
        (lambda w, e: PartialProfileEstimator(method="median"), "method"),
        (lambda w, e: PartialProfileEstimator(rank=-1), "rank"),
        (lambda w, e: PartialProfileEstimator(cluster_weight=0.0), "cluster_weight"),
        (lambda w, e: PartialProfileEstimator(cluster_weight="auto"), "cluster_weight"),
        (lambda w, e: PartialProfileEstimator(pool="all"), "pool"),
        (lambda w, e: PartialProfileEstimator(answers_per_factor=0), "answers_per_factor"),
        (lambda w, e: OnboardingPlanner().fit(w, e[:-1]), "errors"),
        (lambda w, e: PartialProfileEstimator().fit(w, e).estimate(e[:-1]), "errors"),
        (lambda w, e: PartialProfileEstimator().fit(w, e).estimate(e, complete=[True]), "complete"),
        (lambda w, e: PartialProfileEstimator().fit(w, e).estimate(np.full(len(w), np.nan)), "validation_errors"),
        (lambda w, e: PartialProfileEstimator().fit(w, e).estimate(e * 2), "validation_errors"),
        (lambda w, e: OnboardingPlanner().fit(w, e).next_prompts([0, 1], [0.0], 3), "answers"),
        (lambda w, e: OnboardingPlanner().fit(w, e).next_prompts([0, len(w)], [0.0, 1.0], 3), "asked"),
        (lambda w, e: OnboardingPlanner().order(), "estimator"),
        (lambda w, e: PartialProfileEstimator().estimate(e), "estimator"),
    ],
)
def test_bad_input_names_the_field(call, field):
    weights, known, _ = population(n=40, known=4)
    with pytest.raises(RouterInputError) as error:
        call(weights, known)
    assert error.value.field == field, str(error.value)
    assert "\n" not in str(error.value)


def test_not_fitted_is_its_own_error():
    with pytest.raises(NotFittedError):
        OnboardingPlanner().next_prompts([], [], 1)


@pytest.mark.parametrize("method", ORDERS)
def test_with_no_known_llm_the_estimate_is_the_plain_mean_and_every_order_still_orders(method):
    """The pool's first LLMs have no one to learn a prior from: nothing is imputed, nothing fails."""
    weights, _, new = population(n=60)
    none = np.zeros((60, 0))
    partial = ask(new[:, :2], np.arange(0, 60, 3))
    with np.errstate(all="raise"):
        profile = PartialProfileEstimator().fit(weights, none).estimate(partial)
        planner = OnboardingPlanner(method).fit(weights, none)
        picks = planner.next_prompts(np.arange(5), new[:5, 0], 10)
    assert np.array_equal(profile.psi, llm_error_features(weights, partial))
    asked_in = (weights.T @ ~np.isnan(partial)).T > 0  # (L, K): a cluster with no asked prompt has an infinite SE
    assert np.array_equal(np.isfinite(profile.standard_error), asked_in) and not asked_in.all()
    assert len(set(picks.tolist()) - set(range(5))) == 10
