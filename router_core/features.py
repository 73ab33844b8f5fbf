"""Psi: each LLM as a vector of its average error per prompt cluster."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router_core._errors import RouterInputError

__all__ = ["llm_error_features"]


def _as_2d(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise RouterInputError(name, array.shape, "must be a 1-D or 2-D array")
    return array


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
