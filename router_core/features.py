"""Psi: each LLM as a vector of its average error per prompt cluster."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from router_core._errors import RouterInputError

__all__ = ["effective_counts", "llm_error_features", "psi_drift", "validation_counts"]


def _as_2d(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise RouterInputError(name, array.shape, "must be a 1-D or 2-D array")
    return array


def effective_counts(weights: np.ndarray) -> np.ndarray:
    r"""(K,) effective number of prompts per cluster, :math:`(\sum_i w_{ik})^2 / \sum_i w_{ik}^2`.

    A weighted mean of :math:`n_k` such prompts' 0/1 errors has variance :math:`p(1-p)/n_k`: the plain count for
    one-hot weights, fewer for soft ones. 0 for an empty cluster.

    >>> effective_counts(np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]]))
    array([2.77777778, 1.        ])
    """
    weights = _as_2d("weights", weights)
    mass, square = weights.sum(axis=0), (weights**2).sum(axis=0)
    return np.divide(mass**2, square, out=np.zeros_like(mass), where=square > 0)


def validation_counts(assignments: np.ndarray, errors: np.ndarray, shrinkage: float = 0.0) -> np.ndarray:
    """(M, K) precision of each LLM's validation Psi per cluster, in prompts: the effective count of its observed
    validation prompts in the cluster (:func:`effective_counts`) plus ``shrinkage``, the prior's weight in
    :func:`llm_error_features`.

    >>> validation_counts(np.eye(2)[[0, 0, 1]], np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 0.0]]))
    array([[1., 1.],
           [2., 1.]])
    """
    weights = _as_2d("assignments", assignments)
    errors = _as_2d("errors", errors)
    if weights.shape[0] != errors.shape[0]:
        raise RouterInputError("errors", errors.shape, f"needs one row per validation prompt ({weights.shape[0]} rows)")
    observed = ~np.isnan(errors)
    return np.stack([effective_counts(weights[observed[:, j]]) for j in range(errors.shape[1])]) + shrinkage


def llm_error_features(
    assignments: np.ndarray,
    errors: np.ndarray,
    shrinkage: float = 0.0,
    llms: Sequence[str] | None = None,
) -> np.ndarray:
    r"""Per-cluster error of each LLM on the validation prompts: the LLM feature vector Psi.

    With cluster weights :math:`w_{ik}` of validation prompt :math:`i` (one-hot for a hard map) and the
    LLM's error :math:`e_{ih}` (``NaN`` where not collected; those prompts are skipped),

    .. math::

        \Psi_k(h) = \frac{\sum_i w_{ik} e_{ih} + \alpha \bar e_h}{\sum_i w_{ik} + \alpha},

    where :math:`\bar e_h` is the LLM's mean error over all its validation prompts and :math:`\alpha`
    (``shrinkage``) is a prior weight in prompts: a cluster with few validation prompts is pulled toward the
    LLM's overall error instead of resting on a handful of answers. ``shrinkage=0`` is the paper's plain
    per-cluster mean (an empty cluster then falls back to :math:`\bar e_h`).

    Parameters
    ----------
    assignments : (n, K) array
        Cluster weights of the validation prompts; rows sum to 1.
    errors : (n,) or (n, M) array
        Errors in [0, 1] of M LLMs on the same prompts (``1 - score``); NaN = not collected.
    shrinkage : float
        :math:`\alpha >= 0`.
    llms : names of the M LLMs, used in error messages.

    Returns
    -------
    (M, K) array

    Examples
    --------
    >>> a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> llm_error_features(a, np.array([0.0, 1.0, 1.0]))
    array([[0.5, 1. ]])
    """
    weights = _as_2d("assignments", assignments)
    errors = _as_2d("errors", errors)
    if weights.shape[0] != errors.shape[0]:
        raise RouterInputError("errors", errors.shape, f"needs one row per validation prompt ({weights.shape[0]} rows)")
    if shrinkage < 0 or not np.isfinite(shrinkage):
        raise RouterInputError("shrinkage", shrinkage, "must be a finite number >= 0")
    names = list(llms) if llms is not None else [f"#{j}" for j in range(errors.shape[1])]
    observed = ~np.isnan(errors)
    for j in np.flatnonzero(~observed.any(axis=0)):
        raise RouterInputError("validation_errors", names[j], "LLM has no validation outcomes")
    finite = errors[observed]
    if ((finite < 0) | (finite > 1)).any():
        bad = finite[(finite < 0) | (finite > 1)][0]
        raise RouterInputError("validation_errors", float(bad), "errors must be in [0, 1]")
    filled = np.where(observed, errors, 0.0)
    overall = filled.sum(axis=0) / observed.sum(axis=0)  # (M,)
    mass = weights.T @ observed.astype(np.float64)  # (K, M): weight of observed prompts per cluster
    total = weights.T @ filled  # (K, M)
    psi = (total + shrinkage * overall) / np.maximum(mass + shrinkage, 1e-12)
    psi = np.where(mass + shrinkage > 1e-12, psi, overall)  # an empty cluster with no prior: overall error
    return psi.T


def psi_drift(
    assignments: np.ndarray, errors_before: np.ndarray, errors_after: np.ndarray, z: float = 3.0
) -> pl.DataFrame:
    r"""Which clusters of one LLM's Psi moved beyond their sampling noise between two profiles.

    Each profile's :math:`\Psi_k` is a weighted mean of 0/1-like errors with weights :math:`w_{ik}`; its
    variance is :math:`p_k(1-p_k)/n_k` with the effective size :math:`n_k = (\sum_i w_{ik})^2 / \sum_i w_{ik}^2`
    of the cluster's observed prompts and :math:`p_k` the two profiles' pooled error. A cluster moved when
    :math:`|\Psi^{after}_k - \Psi^{before}_k|` exceeds ``z`` standard errors of the difference (z = 3: about
    0.3% false alarms per cluster when nothing changed).

    Parameters
    ----------
    assignments : (n, K) array
        Cluster weights of the validation prompts.
    errors_before, errors_after : (n,) arrays
        The LLM's errors in [0, 1] on the same prompts in each profile; NaN = not answered in that profile.
    z : float
        Threshold in standard errors.

    Returns
    -------
    polars.DataFrame
        One row per cluster: ``cluster, psi_before, psi_after, n_before, n_after, z, moved``.

    Examples
    --------
    >>> a = np.repeat(np.eye(2), 100, axis=0)
    >>> before = np.r_[np.zeros(100), np.full(100, 0.5)]
    >>> after = np.r_[np.ones(100), np.full(100, 0.5)]
    >>> psi_drift(a, before, after)["moved"].to_list()
    [True, False]
    """
    weights = _as_2d("assignments", assignments)
    sides = {"errors_before": errors_before, "errors_after": errors_after}
    stats = {}
    for name, errors in sides.items():
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape != (weights.shape[0],):
            raise RouterInputError(name, errors.shape, f"needs one error per validation prompt ({weights.shape[0]})")
        observed = ~np.isnan(errors)
        if not observed.any():
            raise RouterInputError(name, "all NaN", "the profile has no validation outcomes")
        w = weights[observed]
        stats[name] = (w.sum(axis=0), w.T @ errors[observed], effective_counts(w))
    (m_b, t_b, n_b), (m_a, t_a, n_a) = stats.values()
    psi_b = np.divide(t_b, m_b, out=np.full_like(m_b, np.nan), where=m_b > 0)
    psi_a = np.divide(t_a, m_a, out=np.full_like(m_a, np.nan), where=m_a > 0)
    pooled = np.divide(t_b + t_a, m_b + m_a, out=np.zeros_like(m_b), where=(m_b + m_a) > 0)
    inv_n = np.divide(1.0, n_b, out=np.full_like(n_b, np.inf), where=n_b > 0) + np.divide(
        1.0, n_a, out=np.full_like(n_a, np.inf), where=n_a > 0
    )
    se = np.sqrt(np.clip(pooled * (1 - pooled), 1e-12, None) * inv_n)
    scores = np.where(np.isfinite(se), (psi_a - psi_b) / se, 0.0)
    return pl.DataFrame(
        {
            "cluster": np.arange(weights.shape[1]),
            "psi_before": psi_b,
            "psi_after": psi_a,
            "n_before": n_b,
            "n_after": n_a,
            "z": np.nan_to_num(scores),
            "moved": np.abs(np.nan_to_num(scores)) > z,
        }
    )
