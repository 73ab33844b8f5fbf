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
