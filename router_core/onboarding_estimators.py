r"""Psi of a partially profiled LLM from an item response model (``PartialProfileEstimator(method="irt")``).

A two-parameter logistic (2PL) model of the known LLMs' 0/1 errors, with one ability per cluster:

.. math::

    P(e_{ih} = 1) = \sigma(a_i + b_i x_{ih}), \qquad x_{ih} = \sum_k w_{ik} \theta_{hk},

:math:`a_i, b_i` the prompt's difficulty and discrimination (fitted on the known LLMs, shrunk toward the prompt's
error rate and toward :math:`b = -1`), :math:`\theta_{hk}` the LLM's ability on cluster :math:`k`, shrunk toward its
overall ability :math:`\bar\theta_h` with variance :math:`\tau^2` (a new LLM's :math:`\bar\theta_h` toward the known
LLMs'). A new LLM's abilities are the MAP from the prompts it was asked; each unasked answer is imputed as its error
probability, and a cluster's Psi is the weighted mean of the asked answers and the imputed ones. Unlike the linear
``lowrank`` model, an easy prompt stays easy for every LLM and a discriminating prompt moves most with ability.

:math:`\tau^2` (how far a cluster's ability may stray from the overall one) is chosen for each set of asked prompts
by leave-one-known-LLM-out, as ``lowrank``'s settings are: each known LLM in turn is profiled on the same prompts
with items fitted on the other known LLMs, and the :math:`\tau^2` whose Psi come closest to their full Psi wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from router_core.features import effective_counts, llm_error_features

#: The between-cluster ability variances (logit scale) ``"irt"``'s leave-one-known-LLM-out chooses among.
IRT_TAU2 = (0.1, 0.3, 1.0, 3.0)
_P_CLIP = 0.02  # error rates stay in [_P_CLIP, 1 - _P_CLIP] before a logit
_DISCRIMINATION_PRIOR = (-1.0, 1.0)  # mean and sd of b (error space: a higher ability, fewer errors)
_DIFFICULTY_SD = 2.0  # sd of a around the logit of the prompt's error rate among the known LLMs
_OVERALL_VAR_FLOOR = 0.05


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _P_CLIP, 1 - _P_CLIP)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Ability:
    """One LLM's MAP abilities per cluster ``theta`` (K,) and their posterior covariance ``cov`` (K, K)."""

    theta: np.ndarray
    cov: np.ndarray


class ItemModel:
    """The 2PL items of the validation prompts, fitted on the known LLMs' errors ``errors`` (n, M), no NaN."""

    def __init__(self, weights: np.ndarray, errors: np.ndarray, iterations: int = 4) -> None:
        self.weights = weights
        self.prior_a = _logit(errors.mean(axis=1))
        psi = llm_error_features(weights, errors, 2.0)
        theta = -_logit(psi)
        theta -= theta.mean()
        self.tau2 = _moment_tau2(weights, psi, theta)
        a, b = self.prior_a.copy(), np.full(errors.shape[0], _DISCRIMINATION_PRIOR[0])
        everything = np.ones(errors.shape[0], dtype=bool)
        for _ in range(iterations):  # alternate the items given the abilities and the abilities given the items
            self.a, self.b = self._fit_items(errors, (theta @ weights.T).T, a, b)
            a, b = self.a, self.b
            theta = np.array([self.ability(errors[:, m], everything, self.tau2).theta for m in range(errors.shape[1])])
        overall = theta.mean(axis=1)
        self.overall_prior = (float(overall.mean()), float(max(overall.var(), _OVERALL_VAR_FLOOR)))

    def _fit_items(
        self, errors: np.ndarray, x: np.ndarray, a: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Newton steps for every prompt's (a, b) at once: a logistic regression of its errors on the known LLMs'
        abilities ``x`` (n, M), with Gaussian priors."""
        mean_b, sd_b = _DISCRIMINATION_PRIOR
        for _ in range(5):
            p = _sigmoid(a[:, None] + b[:, None] * x)
            r, v = errors - p, p * (1 - p)
            grad_a = r.sum(axis=1) - (a - self.prior_a) / _DIFFICULTY_SD**2
            grad_b = (r * x).sum(axis=1) - (b - mean_b) / sd_b**2
            h_aa = v.sum(axis=1) + 1 / _DIFFICULTY_SD**2
            h_bb = (v * x * x).sum(axis=1) + 1 / sd_b**2
            h_ab = (v * x).sum(axis=1)
            det = h_aa * h_bb - h_ab**2
            a = a + (h_bb * grad_a - h_ab * grad_b) / det
            b = b + (h_aa * grad_b - h_ab * grad_a) / det
        return a, b

    def ability(self, errors: np.ndarray, asked: np.ndarray, tau2: float, overall_prior=None) -> Ability:
        """MAP abilities of one LLM from its ``errors`` (n,) on the prompts ``asked`` (n,) bool: Newton on (overall,
        per-cluster), each cluster's ability ~ N(overall, ``tau2``), overall ~ N(``overall_prior``) (default flat)."""
        w, a, b, y = self.weights[asked], self.a[asked], self.b[asked], errors[asked]
        k = w.shape[1]
        mean, var = (0.0, 100.0) if overall_prior is None else overall_prior
        t = np.full(k + 1, mean)
        hessian = np.eye(k + 1)
        for _ in range(25):
            p = _sigmoid(a + b * (w @ t[1:]))
            grad = np.empty(k + 1)
            grad[1:] = w.T @ ((y - p) * b) - (t[1:] - t[0]) / tau2
            grad[0] = (t[1:] - t[0]).sum() / tau2 - (t[0] - mean) / var
            hessian = np.zeros((k + 1, k + 1))
            hessian[1:, 1:] = (w * (p * (1 - p) * b * b)[:, None]).T @ w + np.eye(k) / tau2
            hessian[0, 0] = k / tau2 + 1 / var
            hessian[0, 1:] = hessian[1:, 0] = -1 / tau2
            step = np.linalg.solve(hessian, grad)
            t += step
            if np.abs(step).max() < 1e-6:
                break
        return Ability(t[1:], np.linalg.inv(hessian)[1:, 1:])

    def probabilities(self, theta: np.ndarray) -> np.ndarray:
        """(n,) error probability of every prompt for abilities ``theta`` (K,)."""
        return _sigmoid(self.a + self.b * (self.weights @ theta))


def _moment_tau2(weights: np.ndarray, psi: np.ndarray, theta: np.ndarray) -> float:
    """The known LLMs' between-cluster ability variance less its sampling noise (method of moments), in [0.05, 4]."""
    p = np.clip(psi, _P_CLIP, 1 - _P_CLIP)
    noise = 1.0 / (np.maximum(effective_counts(weights), 1.0)[None, :] * p * (1 - p))
    spread = (theta - theta.mean(axis=1, keepdims=True)) ** 2 - noise
    return float(np.clip(spread.mean(), 0.05, 4.0))


class IrtImputer:
    """Psi of partially profiled LLMs from :class:`ItemModel`, with ``tau2`` chosen by leave-one-known-LLM-out
    (``loss(estimates, full)`` judges the known LLMs' Psi; with fewer than 3 known LLMs, the moment estimate)."""

    def __init__(self, shrinkage: float, loss) -> None:
        self.shrinkage = shrinkage
        self.loss = loss
        self._chosen: dict[bytes, float] = {}

    def fit(self, weights: np.ndarray, errors: np.ndarray) -> Self:
        """From the known LLMs' errors (n, M), NaN = not collected (filled with the LLM's mean)."""
        filled = np.where(np.isnan(errors), np.nanmean(errors, axis=0), errors)
        self.weights = weights
        self.items = ItemModel(weights, filled)
        complete = np.flatnonzero(~np.isnan(errors).any(axis=0))
        self.held_out = []
        if len(complete) >= 3:  # (items without LLM m, m's errors, m's full Psi)
            full = llm_error_features(weights, filled, self.shrinkage)
            self.held_out = [
                (ItemModel(weights, np.delete(filled, m, axis=1)), filled[:, m], full[m]) for m in complete
            ]
        return self

    def tau2(self, asked: np.ndarray) -> float:
        """The chosen between-cluster variance for LLMs asked ``asked`` (n,) bool (cached per set of prompts)."""
        if not self.held_out:
            return self.items.tau2
        key = np.packbits(asked).tobytes()
        if key not in self._chosen:
            full = np.array([psi for _, _, psi in self.held_out])
            losses = [self.loss(self._held_out_psi(tau2, asked), full) for tau2 in IRT_TAU2]
            self._chosen[key] = IRT_TAU2[int(np.argmin(losses))]
        return self._chosen[key]

    def _held_out_psi(self, tau2: float, asked: np.ndarray) -> np.ndarray:
        rows = []
        for items, errors, _ in self.held_out:
            theta = items.ability(errors, asked, tau2, items.overall_prior).theta
            filled = np.where(asked, errors, items.probabilities(theta))
            rows.append(llm_error_features(self.weights, filled, self.shrinkage)[0])
        return np.array(rows)

    def estimate(self, errors: np.ndarray, asked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Psi (K,) of one LLM from ``errors`` (n,) on ``asked``, and the variance (K,) the unasked answers add:
        their own noise and, by the delta method, the abilities' uncertainty."""
        items = self.items
        ability = items.ability(errors, asked, self.tau2(asked), items.overall_prior)
        p = items.probabilities(ability.theta)
        psi = llm_error_features(self.weights, np.where(asked, errors, p), self.shrinkage)[0]
        unasked = self.weights[~asked]
        q = p[~asked]
        slope = unasked.T @ (unasked * (q * (1 - q) * items.b[~asked])[:, None])  # (K, K): d Psi_k sum / d theta
        variance = (unasked**2).T @ (q * (1 - q)) + np.einsum("kr,rs,ks->k", slope, ability.cov, slope)
        mass = np.maximum(self.weights.sum(axis=0) + self.shrinkage, 1e-12)
        return psi, variance / mass**2
