"""Every bad input raises a RouterInputError (a ValueError) naming the field and the offending value."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from router_core import (
    KMeansClusterMap,
    LearnedClusterMap,
    NotFittedError,
    RouterInputError,
    UniRouter,
    ZeroRouter,
    check_llms,
    check_prompts,
    error_matrix,
    llm_error_features,
)


def _raises(field: str, value: str):
    return pytest.raises(RouterInputError, match=rf"{field}=.*{value}")


@pytest.fixture
def fitted(two_topics) -> UniRouter:
    cmap = KMeansClusterMap(2, seed=0).fit(two_topics.train)
    ids = [f"validation-{i}" for i in range(len(two_topics.validation))]
    return UniRouter(cmap).fit(two_topics.validation, ids, two_topics.outcomes("validation"), two_topics.llm_frame())


def test_is_a_value_error_with_field_and_value():
    err = RouterInputError("cost", -1.0, "must be >= 0")
    assert isinstance(err, ValueError) and err.field == "cost" and err.value == -1.0


def test_duplicate_prompt_id():
    with _raises("prompt_id", "7"):
        check_prompts(pl.DataFrame({"prompt_id": [7, 7], "text": ["a", "b"]}))


def test_unknown_split():
    with _raises("split", "dev"):
        check_prompts(pl.DataFrame({"prompt_id": [1, 2], "text": ["a", "b"], "split": ["train", "dev"]}))


def test_empty_prompt_text():
    with _raises("text", "''"):
        check_prompts(pl.DataFrame({"prompt_id": [1, 2], "text": ["a", ""]}))


@pytest.mark.parametrize("score", [float("nan"), 1.5, -0.1, None])
def test_bad_score(score):
    outcomes = pl.DataFrame({"model": ["A", "A"], "prompt_id": [1, 2], "score": [1.0, score]})
    with _raises("score", str(score)):
        error_matrix(outcomes, [1, 2], ["A"])


def test_duplicate_outcome():
    outcomes = pl.DataFrame({"model": ["A", "A"], "prompt_id": [1, 1], "score": [1.0, 0.0]})
    with _raises(r"\(model, prompt_id\)", "'A', 1"):
        error_matrix(outcomes, [1], ["A"])


@pytest.mark.parametrize("cost", [-0.5, float("nan"), float("inf")])
def test_bad_cost(cost):
    with _raises("cost", str(cost)):
        check_llms(pl.DataFrame({"model": ["A"], "cost": [cost]}))


def test_duplicate_llm():
    with _raises("model", "A"):
        check_llms(pl.DataFrame({"model": ["A", "A"], "cost": [1.0, 2.0]}))


def test_llm_with_no_validation_outcomes(two_topics):
    with _raises("model", "ghost"):
        error_matrix(two_topics.outcomes("validation"), ["validation-0"], ["A", "ghost"])
    with _raises("validation_errors", "ghost"):
        llm_error_features(np.eye(2), np.full(2, np.nan), llms=["ghost"])


def test_add_llm_with_no_outcomes_or_negative_cost_leaves_the_pool_unchanged(fitted):
    before = (list(fitted.llms_), fitted.psi_.copy())
    with _raises("validation_errors", "E"):
        fitted.add_llm("E", np.full(len(fitted.validation_errors_), np.nan), cost=1.0)
    with _raises("cost", "-1"):
        fitted.add_llm("E", np.zeros(len(fitted.validation_errors_)), cost=-1.0)
    with _raises("model", "A"):
        fitted.add_llm("A", np.zeros(len(fitted.validation_errors_)), cost=1.0)
    assert fitted.llms_ == before[0] and np.array_equal(fitted.psi_, before[1])


def test_unknown_and_empty_candidates(fitted, two_topics):
    with _raises("candidates", "nope"):
        fitted.route(two_topics.test, 0.0, candidates=["A", "nope"])
    with _raises("candidates", r"\[\]"):
        fitted.route(two_topics.test, 0.0, candidates=[])
    with _raises("candidates", "nope"):
        fitted.remove_llm("nope")


def test_negative_cost_weight(fitted, two_topics):
    with _raises("cost_weight", "-1"):
        fitted.route(two_topics.test, -1.0)


def test_wrong_embedding_dimension(fitted):
    with _raises("embeddings", r"\(3, 5\)"):
        fitted.predict_error(np.ones((3, 5)))


@pytest.mark.parametrize("cmap", [KMeansClusterMap(2), LearnedClusterMap(2)])
def test_cluster_map_used_before_fit(cmap, two_topics):
    with pytest.raises(NotFittedError, match=r"estimator=.*ClusterMap.*not fitted"):
        cmap.transform(two_topics.test)
    with pytest.raises(NotFittedError):
        UniRouter(cmap).fit_arrays(
            two_topics.validation, two_topics.error_matrix("validation"), ["A", "B", "C"], [1, 1, 1]
        )


def test_router_used_before_fit(two_topics):
    with pytest.raises(NotFittedError, match="ZeroRouter"):
        ZeroRouter().route(two_topics.test, 0.0)


def test_too_many_clusters(two_topics):
    with _raises("n_clusters", "500"):
        KMeansClusterMap(500).fit(two_topics.train)


def test_learned_map_needs_training_errors(two_topics):
    with _raises("errors", "None"):
        LearnedClusterMap(2).fit(two_topics.train)


def test_a_refit_with_bad_input_keeps_the_fitted_pool(fitted, two_topics):
    before = (list(fitted.llms_), fitted.psi_.copy())
    errors = two_topics.error_matrix("validation")
    with _raises("cost", "-2"):
        fitted.fit_arrays(two_topics.validation, errors, ["X", "Y", "Z"], [1.0, -2.0, 1.0])
    with _raises("model", "X"):
        fitted.fit_arrays(two_topics.validation, errors, ["X", "X", "Z"], [1.0, 1.0, 1.0])
    assert fitted.llms_ == before[0] and np.array_equal(fitted.psi_, before[1])
    fresh = ZeroRouter()
    with _raises("cost", "-2"):
        fresh.fit_arrays(two_topics.validation, errors, ["X", "Y", "Z"], [1.0, -2.0, 1.0])
    with pytest.raises(NotFittedError):
        fresh.route(two_topics.test, 0.0)


def test_clusters_for_lowers_k_to_the_prompts_and_names_a_bad_argument():
    from router_core import clusters_for

    assert clusters_for(10_000, 16) == 16  # plenty: K as asked
    assert clusters_for(12, 16, prompts_per_cluster=4) == 3  # 4 prompts a cluster on average
    assert clusters_for(3, 16, prompts_per_cluster=4) == 2  # two clusters where there are two prompts
    assert clusters_for(1, 16) == 1 and clusters_for(0, 16) == 1 and clusters_for(50, 1) == 1
    for args, field in [((-1, 16), "n_prompts"), ((10, 0), "n_clusters"), ((10, 4, 0), "prompts_per_cluster")]:
        with pytest.raises(RouterInputError, match=rf"^{field}=.*: must be an integer >= "):
            clusters_for(*args)
    with pytest.raises(RouterInputError, match=r"^n_clusters=True: must be an integer"):
        clusters_for(10, True)
