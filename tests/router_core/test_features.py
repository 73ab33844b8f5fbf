from __future__ import annotations

import numpy as np

from router_core import llm_error_features


def test_plain_per_cluster_mean_skips_uncollected_prompts():
    assignments = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=float)
    errors = np.array([[0.0, 1.0], [1.0, np.nan], [1.0, 1.0], [0.0, 0.0]])
    psi = llm_error_features(assignments, errors)
    assert np.allclose(psi, [[2 / 3, 0.0], [1.0, 0.0]])


def test_shrinkage_pulls_sparse_clusters_toward_the_overall_error():
    assignments = np.array([[1, 0]] * 9 + [[0, 1]], dtype=float)
    errors = np.array([0.0] * 9 + [1.0])  # overall error 0.1; the 1-prompt cluster says 1.0
    psi = llm_error_features(assignments, errors, shrinkage=4.0)[0]
    assert np.isclose(psi[1], (1.0 + 4 * 0.1) / (1 + 4))
    assert np.isclose(psi[0], (0.0 + 4 * 0.1) / (9 + 4))
    assert llm_error_features(assignments, errors)[0][1] == 1.0


def test_empty_cluster_falls_back_to_overall_error():
    psi = llm_error_features(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0.0, 1.0]))
    assert np.allclose(psi, [[0.5, 0.5]])


def test_soft_assignments_weight_the_mean():
    psi = llm_error_features(np.array([[0.75, 0.25], [0.25, 0.75]]), np.array([1.0, 0.0]))
    assert np.allclose(psi, [[0.75, 0.25]])


def test_psi_drift_names_the_cluster_that_moved_and_not_the_noisy_ones():
    from router_core import psi_drift

    rng = np.random.default_rng(0)
    assignments = np.repeat(np.eye(4), 150, axis=0)  # 4 clusters of 150 validation prompts
    rates = np.repeat([0.2, 0.5, 0.7, 0.4], 150)
    before = (rng.uniform(size=600) < rates).astype(float)
    same = (rng.uniform(size=600) < rates).astype(float)  # a re-profile of the same model: noise only
    changed = same.copy()
    changed[300:450] = (rng.uniform(size=150) < 0.2).astype(float)  # cluster 2 got much better (0.7 -> 0.2)
    assert not psi_drift(assignments, before, same)["moved"].any()
    drift = psi_drift(assignments, before, changed)
    assert drift.filter("moved")["cluster"].to_list() == [2]
    assert drift["z"][2] < -3 and np.isclose(drift["n_before"][0], 150)


def test_psi_drift_skips_unanswered_prompts_and_rejects_bad_shapes():
    import pytest

    from router_core import RouterInputError, psi_drift

    assignments = np.repeat(np.eye(2), 50, axis=0)
    before = np.r_[np.zeros(50), np.ones(50)]
    after = before.copy()
    after[:10] = np.nan  # not answered this time: not counted as a change
    drift = psi_drift(assignments, before, after)
    assert not drift["moved"].any() and np.isclose(drift["n_after"][0], 40)
    with pytest.raises(RouterInputError, match="errors_after"):
        psi_drift(assignments, before, after[:10])
    with pytest.raises(RouterInputError, match="errors_before"):
        psi_drift(assignments, np.full(100, np.nan), after)
