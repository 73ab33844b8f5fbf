"""Routing behaviour on the two-topic fixture, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from router_core import (
    KMeansClusterMap,
    KNNRouter,
    LearnedClusterMap,
    OracleRouter,
    RandomRouter,
    RouterInputError,
    UniRouter,
    ZeroRouter,
    choose,
    out_of_fold_errors,
)


def _uniroute(data, kind: str) -> UniRouter:
    if kind == "kmeans":
        cmap = KMeansClusterMap(2, seed=0).fit(data.train)
    else:
        cmap = LearnedClusterMap(2, seed=0).fit(data.train, data.error_matrix("train"))
    return UniRouter(cmap).fit_arrays(data.validation, data.error_matrix("validation"), data.llms, data.costs)


@pytest.fixture(params=["kmeans", "learned", "knn"])
def router(request, two_topics):
    if request.param == "knn":
        return KNNRouter(5).fit_arrays(
            two_topics.validation, two_topics.error_matrix("validation"), two_topics.llms, two_topics.costs
        )
    return _uniroute(two_topics, request.param)


def test_each_topic_goes_to_its_specialist_when_cost_is_free(router, two_topics):
    chosen = router.route(two_topics.test, cost_weight=0.0)
    expected = np.where(two_topics.test_topic == 0, "A", "B")
    assert (chosen == expected).all()


def test_everything_goes_to_the_cheap_llm_when_cost_dominates(router, two_topics):
    assert (router.route(two_topics.test, cost_weight=100.0) == "C").all()


def test_candidates_restrict_the_choice(router, two_topics):
    chosen = router.route(two_topics.test, cost_weight=0.0, candidates=["A", "C"])
    assert set(chosen) <= {"A", "C"}
    assert (chosen[two_topics.test_topic == 0] == "A").all()
    assert (chosen[two_topics.test_topic == 1] == "C").all()  # C errs half the time, A always


@pytest.mark.parametrize("kind", ["kmeans", "learned"])
def test_adding_an_unseen_llm_changes_routing_without_refitting_the_map(kind, two_topics):
    router = _uniroute(two_topics, kind)
    state_before = {k: v.copy() for k, v in router.cluster_map.get_arrays().items()}
    assert "D" not in set(router.route(two_topics.test, 0.0))
    router.add_llm("D", two_topics.errors(two_topics.validation_topic, "D"), cost=0.5)
    assert (router.route(two_topics.test, 0.0) == "D").all()  # never wrong and cheaper than A and B
    for name, array in router.cluster_map.get_arrays().items():
        assert np.array_equal(array, state_before[name]), name
    router.remove_llm("D")
    assert "D" not in set(router.route(two_topics.test, 0.0))


def test_add_llm_from_a_frame_matches_add_from_an_array(two_topics):
    data = two_topics
    cmap = KMeansClusterMap(2, seed=0).fit(data.train)
    ids = [f"validation-{i}" for i in range(len(data.validation))]
    by_frame = UniRouter(cmap).fit(data.validation, ids, data.outcomes("validation"), data.llm_frame())
    by_frame.add_llm("D", data.outcomes("validation", ["D"]).drop("model"), cost=0.5)
    by_array = UniRouter(cmap).fit_arrays(data.validation, data.error_matrix("validation"), data.llms, data.costs)
    by_array.add_llm("D", data.errors(data.validation_topic, "D"), cost=0.5)
    assert np.array_equal(by_frame.psi_, by_array.psi_)


def test_psi_of_uniroute_kmeans_is_the_per_cluster_validation_error(two_topics):
    router = _uniroute(two_topics, "kmeans")
    topic_of_cluster = router.cluster_map.transform(two_topics.validation).argmax(1)
    cluster_of_topic0 = np.bincount(topic_of_cluster[two_topics.validation_topic == 0]).argmax()
    psi_a = router.psi_[router.llms_.index("A")]
    assert psi_a[cluster_of_topic0] == 0.0 and psi_a[1 - cluster_of_topic0] == 1.0


def test_zero_router_ignores_the_prompt(two_topics):
    router = ZeroRouter().fit_arrays(
        two_topics.validation, two_topics.error_matrix("validation"), two_topics.llms, two_topics.costs
    )
    predicted = router.predict_error(two_topics.test)
    assert np.allclose(predicted, predicted[0])
    assert len(set(router.route(two_topics.test, 0.0))) == 1


def test_oracle_knows_the_truth_and_rejects_unknown_prompts(two_topics):
    errors = two_topics.error_matrix("test")
    oracle = OracleRouter().fit_arrays(two_topics.test, errors, two_topics.llms, two_topics.costs)
    assert np.array_equal(oracle.predict_error(two_topics.test), errors)
    with pytest.raises(ValueError, match="embeddings"):
        oracle.predict_error(two_topics.validation[:1] + 1.0)


def test_random_router_is_seeded_and_spreads_choices(two_topics):
    def routes(seed: int) -> np.ndarray:
        router = RandomRouter(seed).fit_arrays(
            two_topics.validation, two_topics.error_matrix("validation"), two_topics.llms, two_topics.costs
        )
        return router.route(two_topics.test, 0.0)

    assert np.array_equal(routes(1), routes(1))
    assert not np.array_equal(routes(1), routes(2))
    assert set(routes(1)) == {"A", "B", "C"}


def test_ties_go_to_the_cheaper_llm():
    predicted = np.array([[0.2, 0.2, 0.2]])
    assert choose(predicted, np.array([3.0, 1.0, 2.0]), 0.0)[0] == 1
    assert choose(np.array([[0.0, 0.9]]), np.array([5.0, 1.0]), np.inf)[0] == 1


def test_learned_map_is_deterministic_given_a_seed(two_topics):
    fits = [LearnedClusterMap(3, seed=7).fit(two_topics.train, two_topics.error_matrix("train")) for _ in range(2)]
    assert np.array_equal(fits[0].weights_, fits[1].weights_)
    soft = fits[0].transform(two_topics.test)
    assert np.allclose(soft.sum(1), 1.0) and (soft >= 0).all()


def test_learned_map_improves_its_training_loss_over_the_kmeans_start(two_topics):
    fitted = LearnedClusterMap(2, seed=0, init_sharpness=1.0).fit(two_topics.train, two_topics.error_matrix("train"))
    assert fitted.train_loss_ < fitted.init_loss_ - 0.01


def test_cluster_weights_are_phi_and_come_with_the_errors_they_make(router, two_topics):
    x, some = two_topics.test[:5], two_topics.llms[::-1]
    errors, phi = router.predict_error_with_weights(x, some)
    assert np.array_equal(errors, router.predict_error(x, some))
    if isinstance(router, KNNRouter):  # no clusters: no weights
        assert phi is None and router.cluster_weights(x) is None
        return
    assert phi.shape == (5, 2) and np.allclose(phi.sum(axis=1), 1.0)
    assert np.array_equal(phi, router.cluster_weights(x)) and np.array_equal(phi, router.cluster_map.transform(x))
    with pytest.raises(ValueError, match="embeddings"):
        router.cluster_weights(x[:, :3])


def test_features_given_for_an_llm_are_its_psi_through_cross_fitting_and_pool_changes(two_topics):
    router, errors = _uniroute(two_topics, "kmeans"), two_topics.error_matrix("validation")
    validation_psi, c, given = router.psi_.copy(), router.llms_.index("C"), np.array([0.9, 0.05])
    assert not np.allclose(validation_psi[c], given)
    router.use_features({"C": given})
    assert np.array_equal(router.psi_[c], given)
    assert np.array_equal(np.delete(router.psi_, c, 0), np.delete(validation_psi, c, 0))  # the others: validation's
    phi = router.cluster_map.transform(two_topics.validation)
    assert np.allclose(out_of_fold_errors(router, two_topics.validation, errors)[:, c], phi @ given)  # every fold's
    router.add_llm("D", two_topics.errors(two_topics.validation_topic, "D"), cost=0.5)
    assert np.array_equal(router.psi_[c], given)
    router.remove_llm("C").add_llm("C", errors[:, c], cost=0.1)  # its features left the pool with it
    assert np.array_equal(router.psi_[-1], validation_psi[c])
    assert np.array_equal(router.use_features({"C": given}).use_features(None).psi_[-1], validation_psi[c])


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"Z": [0.1, 0.2]}, "features='Z': unknown LLM"),
        ({"C": [0.1]}, r"features\['C'\]=\[0.1\]: must be 2 errors in \[0, 1\]"),
        ({"C": [0.1, 1.5]}, r"features\['C'\]=\[0.1, 1.5\]"),
        ({"C": [np.nan, 0.1]}, r"features\['C'\]=\[nan, 0.1\]"),
    ],
)
def test_bad_features_are_refused_naming_the_llm_and_value(two_topics, features, message):
    router = _uniroute(two_topics, "kmeans")
    before = router.psi_.copy()
    with pytest.raises(RouterInputError, match=message):
        router.use_features(features)
    assert np.array_equal(router.psi_, before)
