"""Onboarding a new LLM from part of the validation set: which prompts to ask first, and Psi from what was asked.

:class:`OnboardingPlanner` orders the validation prompts for a new LLM so that any prefix estimates its Psi well;
:class:`PartialProfileEstimator` turns the answers asked so far into Psi with a standard error per cluster. A
complete profile gives exactly :func:`router_core.features.llm_error_features`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from router_core._errors import NotFittedError, RouterInputError
from router_core.features import _as_2d, effective_counts, llm_error_features

__all__ = [
    "DEFAULT_ONBOARDING_FRACTION",
    "DEFAULT_ORDER",
    "ORDERS",
    "OnboardingPlanner",
    "PartialProfile",
    "PartialProfileEstimator",
]

#: Prompt orders :class:`OnboardingPlanner` knows.
ORDERS = ("random", "stratified")
#: The order the pipeline uses.
DEFAULT_ORDER = "stratified"
#: The share of the validation prompts a new LLM is asked before its first router version.
DEFAULT_ONBOARDING_FRACTION = 1.0


class OnboardingPlanner:
    """Orders validation prompts for a new LLM: any prefix of :meth:`order` is meant to estimate its Psi well.

    Parameters
    ----------
    method : one of :data:`ORDERS`
    random_state : seed of the order's random choices.
    """

    def __init__(self, method: str = DEFAULT_ORDER, random_state: int = 0) -> None:
        if method not in ORDERS:
            raise RouterInputError("method", method, f"must be one of {list(ORDERS)}")
        self.method = method
        self.random_state = random_state

    def fit(self, assignments: np.ndarray, errors: np.ndarray) -> Self:
        """Learn from the known LLMs: ``assignments`` (n, K) cluster weights of the validation prompts and
        ``errors`` (n, M) the known LLMs' errors on them (NaN = not collected)."""
        weights = _as_2d("assignments", assignments)
        errors = _as_2d("errors", errors)
        if errors.shape[0] != weights.shape[0]:
            raise RouterInputError("errors", errors.shape, f"needs one row per validation prompt ({weights.shape[0]})")
        self.assignments_ = weights
        self.errors_ = errors
        return self

    def order(self) -> np.ndarray:
        """(n,) a permutation of the validation prompts' indices, the first to ask first."""
        if not hasattr(self, "assignments_"):
            raise NotFittedError(self)
        rng = np.random.default_rng(self.random_state)
        n = self.assignments_.shape[0]
        if self.method == "random":
            return rng.permutation(n)
        # stratified: round-robin over clusters, each cluster's prompts in random order
        home = self.assignments_.argmax(axis=1)
        queues = [list(rng.permutation(np.flatnonzero(home == k))) for k in range(self.assignments_.shape[1])]
        out: list[int] = []
        while any(queues):
            for queue in queues:
                if queue:
                    out.append(int(queue.pop()))
        return np.asarray(out, dtype=np.int64)

    def next_prompts(self, asked: np.ndarray, answers: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` prompt indices to ask, given the indices ``asked`` so far and their ``answers`` (errors);
        an order that does not adapt ignores the answers."""
        del answers
        done = set(np.asarray(asked, dtype=np.int64).tolist())
        rest = [i for i in self.order() if i not in done]
        return np.asarray(rest[: max(n, 0)], dtype=np.int64)


@dataclass(frozen=True)
class PartialProfile:
    """Psi of L LLMs from partial profiles: ``psi`` and ``standard_error`` (L, K); ``asked`` (L,) prompts answered."""

    psi: np.ndarray
    standard_error: np.ndarray
    asked: np.ndarray


class PartialProfileEstimator:
    """Psi of new LLMs from the validation prompts they were asked.

    Parameters
    ----------
    shrinkage : the prior weight in prompts of :func:`router_core.features.llm_error_features` (the pipeline's).
    """

    def __init__(self, shrinkage: float = 0.0) -> None:
        self.shrinkage = shrinkage

    def fit(self, assignments: np.ndarray, errors: np.ndarray) -> Self:
        """Learn the prior from the known LLMs' errors ``errors`` (n, M) on the validation prompts."""
        weights = _as_2d("assignments", assignments)
        errors = _as_2d("errors", errors)
        if errors.shape[0] != weights.shape[0]:
            raise RouterInputError("errors", errors.shape, f"needs one row per validation prompt ({weights.shape[0]})")
        self.assignments_ = weights
        self.known_psi_ = llm_error_features(weights, errors, self.shrinkage)
        return self

    def estimate(self, errors: np.ndarray, complete: np.ndarray | None = None) -> PartialProfile:
        """Psi of L LLMs from ``errors`` (n,) or (n, L), NaN where not asked. LLMs marked ``complete`` (default:
        those with no NaN) get exactly :func:`llm_error_features`."""
        if not hasattr(self, "assignments_"):
            raise NotFittedError(self)
        errors = _as_2d("errors", errors)
        observed = ~np.isnan(errors)
        complete = observed.all(axis=0) if complete is None else np.asarray(complete, dtype=bool)
        psi = llm_error_features(self.assignments_, errors, self.shrinkage)
        counts = np.stack([effective_counts(self.assignments_[observed[:, j]]) for j in range(errors.shape[1])])
        variance = np.clip(psi * (1 - psi), 1e-4, None) / np.maximum(counts + self.shrinkage, 1e-12)
        se = np.where(counts + self.shrinkage > 0, np.sqrt(variance), np.inf)
        del complete  # the plain estimator is exact for every LLM
        return PartialProfile(psi=psi, standard_error=se, asked=observed.sum(axis=0))
