r"""Onboarding a new LLM from part of the validation set: which prompts to ask first, and Psi from what was asked.

:class:`OnboardingPlanner` orders the validation prompts for a new LLM so that any prefix estimates its Psi well;
:class:`PartialProfileEstimator` turns the answers asked so far into Psi with a standard error per cluster. A
complete profile gives exactly :func:`router_core.features.llm_error_features`.

The estimator imputes each unasked answer from what the known LLMs did on that prompt (arXiv 2402.14992's idea of
estimating the whole from anchor items). ``method="irt"`` (the default) uses a 2PL item response model with one
ability per cluster (:mod:`router_core.onboarding_estimators`); ``lowrank`` a low-rank model of the known LLMs'
per-prompt errors,

.. math::

    e_{ih} \approx d_i + c_h + F_i^\top z_h + \sum_k w_{ik} r_{hk},

with :math:`d_i` the prompt's mean error among the known LLMs (its difficulty), :math:`c_h` the LLM's offset,
:math:`F` the top principal directions of the known LLMs' residuals and :math:`r_{hk}` a per-cluster correction.
For a new LLM, :math:`c, z` (ridge, with the known LLMs' spread as the prior) and :math:`r` (shrunk toward 0) come
from the answers asked; each cluster's Psi is then the weighted mean of the asked answers and the imputed ones, so
the prior's weight in a cluster is exactly the share of its prompts not asked yet.

How much to trust the model (the correction's prior weight, the number of directions, or no imputation at all:
the asked answers' plain mean) is chosen for each set of asked prompts by leave-one-known-LLM-out, an empirical
Bayes choice that adapts to the fraction and the data: each known LLM in turn is "onboarded" on the same prompts
with a prior from the other known LLMs, and the setting whose Psi come closest to their full Psi wins. "Closest"
is judged for the pool the Psi will route in (``pool``): one new LLM among fully profiled ones (the squared error)
or a pool asked alike (the error left after a per-cluster shift and one overall scale common to every LLM, which
change no routing choice along the cost sweep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from router_core._errors import NotFittedError, RouterInputError
from router_core.features import _as_2d, effective_counts, llm_error_features
from router_core.onboarding_estimators import IrtImputer

__all__ = [
    "DEFAULT_ESTIMATOR",
    "DEFAULT_ONBOARDING_FRACTION",
    "DEFAULT_ORDER",
    "ESTIMATORS",
    "ORDERS",
    "POOLS",
    "OnboardingPlanner",
    "PartialProfile",
    "PartialProfileEstimator",
]

#: Prompt orders :class:`OnboardingPlanner` knows: ``random`` (the baseline), ``stratified`` (each cluster in
#: proportion to its weight), ``discriminative`` (stratified, each cluster's prompts that best separate the known
#: LLMs first), ``adaptive`` (the cluster whose Psi is least certain next, given the answers so far).
ORDERS = ("random", "stratified", "discriminative", "adaptive")
#: How :class:`PartialProfileEstimator` fills what was not asked: ``plain`` (nothing: the asked prompts' mean),
#: ``difficulty`` (the prompt's difficulty among the known LLMs plus the new LLM's offset), ``lowrank`` (plus the
#: known LLMs' main directions of disagreement and a per-cluster correction), ``irt`` (a 2PL item response model
#: with one ability per cluster: :mod:`router_core.onboarding_estimators`).
ESTIMATORS = ("plain", "difficulty", "lowrank", "irt")
#: The order the pipeline uses: on benchmarks/onboarding_cost.py it beat random order with the plain estimator at
#: every fraction on the multi-task dataset and on full MMLU-Pro (on its 3,000-prompt sample not at 10% and 20%).
DEFAULT_ORDER = "discriminative"
#: The estimator the pipeline uses (``irt``: on the multi-task set 73% of the full gain at 20% where ``lowrank``
#: kept 55%, and a provisional LLM's worst pool -0.003 where ``lowrank``'s was -0.018; docs/benchmarks.md).
DEFAULT_ESTIMATOR = "irt"
#: The share of the validation prompts a new LLM is asked before its first router version (the pipeline's default of
#: ``onboarding.fraction``): ``benchmarks/onboarding_cost.py`` keeps >= 90% of the full profile's routing gain at 0.5
#: on all three datasets (MMLU-Pro sample 120%, the multi-task set 103%, full MMLU-Pro 119%). The rest of its
#: validation prompts is asked by the nightly schedule or a follow-up run (refinement), each step re-registering only
#: when the features changed. Users set ``onboarding.fraction`` / ``UNIROUTE_ONBOARDING_FRACTION`` to 1.0 for the
#: full profile at once.
DEFAULT_ONBOARDING_FRACTION = 0.5

_CLIP = 0.02  # imputed error probabilities stay in [_CLIP, 1 - _CLIP]


def _check_pair(assignments: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weights = _as_2d("assignments", assignments)
    errors = _as_2d("errors", errors)
    if errors.shape[0] != weights.shape[0]:
        raise RouterInputError("errors", errors.shape, f"needs one row per validation prompt ({weights.shape[0]})")
    return weights, errors


@dataclass(frozen=True)
class PartialProfile:
    """Psi of L LLMs from partial profiles: ``psi`` and ``standard_error`` (L, K); ``asked`` (L,) prompts answered."""

    psi: np.ndarray
    standard_error: np.ndarray
    asked: np.ndarray


@dataclass(frozen=True)
class _Imputation:
    """One LLM's answers with the unasked ones imputed: ``filled`` (n,), ``p`` (n,) the model's error probability,
    ``cluster_var`` (K,) the posterior variance of the per-cluster correction, ``beta_cov`` that of the LLM's
    offset and factor scores."""

    filled: np.ndarray
    p: np.ndarray
    cluster_var: np.ndarray
    beta_cov: np.ndarray


@dataclass(frozen=True)
class _Prior:
    """What the known LLMs say about a new one: each prompt's ``difficulty`` (n,), the prompts' scores on the
    known LLMs' main directions of disagreement ``factors`` (n, r), the prior variance of a new LLM's offset and
    scores ``prior_var`` (1 + r,) and the answers' noise variance around the model ``noise_var``."""

    difficulty: np.ndarray
    factors: np.ndarray
    prior_var: np.ndarray
    noise_var: float

    @classmethod
    def fit(cls, errors: np.ndarray, rank: int) -> _Prior:
        """From the known LLMs' errors (n, M), NaN = not collected (filled with the LLM's mean)."""
        filled = np.where(np.isnan(errors), np.nanmean(errors, axis=0), errors)
        difficulty = filled.mean(axis=1)
        residual = filled - difficulty[:, None]
        offsets = residual.mean(axis=0)
        residual -= offsets
        rank = min(rank, max(errors.shape[1] - 1, 0))
        u, s, vt = np.linalg.svd(residual, full_matrices=False)
        loadings = vt[:rank].T  # (M, r), unit norm: the known LLMs' scores
        factors = u[:, :rank] * s[:rank]
        prior_var = np.r_[max(offsets.var(), 1e-4), np.maximum(loadings.var(axis=0), 1e-4)]
        noise_var = max(float((residual - factors @ loadings.T).var()), 0.05)
        return cls(difficulty, factors, prior_var, noise_var)

    def design(self) -> np.ndarray:
        """(n, 1 + r): the LLM offset's column and the prompts' factor scores."""
        return np.column_stack([np.ones(len(self.difficulty)), self.factors])


@dataclass(frozen=True)
class _Setting:
    """How one partial profile is imputed: factor directions used and the per-cluster correction's prior weight
    in prompts (``inf``: no correction)."""

    rank: int
    cluster_weight: float
    impute: bool = True


#: The pools ``cluster_weight="cv"`` can judge Psi for (see :class:`PartialProfileEstimator`'s ``pool``).
POOLS = ("mixed", "partial")
#: The per-cluster correction's prior weights (in prompts) that ``cluster_weight="cv"`` chooses among.
CV_CLUSTER_WEIGHTS = (0.5, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, np.inf)


class PartialProfileEstimator:
    """Psi of new LLMs from the validation prompts they were asked, shrunk toward what the known LLMs imply.

    Parameters
    ----------
    shrinkage : the prior weight in prompts of :func:`router_core.features.llm_error_features` (the pipeline's).
    method : one of :data:`ESTIMATORS`.
    rank : principal directions of the known LLMs' errors used by ``lowrank`` (with ``"cv"``: at most).
    cluster_weight : the per-cluster correction's prior weight in prompts (``lowrank``); ``"cv"`` (the default):
        chosen, with the number of directions, for each set of asked prompts by leave-one-known-LLM-out: each known
        LLM in turn is profiled on the same prompts with a prior from the other known LLMs, and the setting whose
        Psi is closest to that LLM's full Psi (squared error weighted by cluster mass, summed over the known LLMs)
        is used; None: estimated from the known LLMs' spread around their own low-rank fit (over-shrinks).
    answers_per_factor : a new LLM's factor scores are fitted only with this many answers each (``lowrank``: with
        fewer answers, fewer of the ``rank`` directions are used).
    pool : what ``"cv"`` judges Psi by (:data:`POOLS`): ``"mixed"`` (the pipeline's case: the new LLM is routed
        among fully profiled ones, so its Psi's squared error counts as it is); ``"partial"`` (every LLM routed is
        asked the same prompts, as when several are onboarded together: the error left after a per-cluster shift
        and one overall scale, which change no routing choice when all LLMs share them).
    """

    def __init__(
        self,
        shrinkage: float = 0.0,
        method: str = DEFAULT_ESTIMATOR,
        rank: int = 2,
        cluster_weight: float | str | None = "cv",
        answers_per_factor: int = 30,
        pool: str = "mixed",
    ) -> None:
        if method not in ESTIMATORS:
            raise RouterInputError("method", method, f"must be one of {list(ESTIMATORS)}")
        if not isinstance(rank, int | np.integer) or rank < 0:
            raise RouterInputError("rank", rank, "must be an integer >= 0")
        if not isinstance(answers_per_factor, int | np.integer) or answers_per_factor < 1:
            raise RouterInputError("answers_per_factor", answers_per_factor, "must be an integer >= 1")
        if not (cluster_weight is None or cluster_weight == "cv" or _positive(cluster_weight)):
            raise RouterInputError("cluster_weight", cluster_weight, "must be > 0, 'cv' or None (estimated)")
        if pool not in POOLS:
            raise RouterInputError("pool", pool, f"must be one of {list(POOLS)}")
        self.shrinkage = shrinkage
        self.pool = pool
        self.method = method
        self.rank = rank
        self.cluster_weight = cluster_weight
        self.answers_per_factor = answers_per_factor

    def fit(self, assignments: np.ndarray, errors: np.ndarray) -> Self:
        """Learn the prior from the known LLMs' errors ``errors`` (n, M) on the validation prompts (NaN = not
        collected); ``assignments`` (n, K) are the prompts' cluster weights."""
        weights, errors = _check_pair(assignments, errors)
        self.assignments_ = weights
        self.known_psi_ = llm_error_features(weights, errors, self.shrinkage)
        self.imputes_ = self.method != "plain" and errors.shape[1] > 0  # no known LLM: nothing to impute from
        self._settings: dict[bytes, _Setting] = {}
        if self.imputes_ and self.method == "irt":
            mass = weights.sum(axis=0)
            self.irt_ = IrtImputer(self.shrinkage, lambda psi, full: _routing_loss(psi, full, mass, self.pool))
            self.irt_.fit(weights, errors)
        elif self.imputes_:
            self._fit_prior(errors)
        return self

    def _fit_prior(self, errors: np.ndarray) -> None:
        """The prior from every known LLM; with ``cv``, also each known LLM's leave-one-out prior."""
        lowrank = self.method == "lowrank"
        self.prior_ = _Prior.fit(errors, self.rank if lowrank else 0)
        self.difficulty_, self.factors_ = self.prior_.difficulty, self.prior_.factors
        self.prior_var_, self.noise_var_ = self.prior_.prior_var, self.prior_.noise_var
        complete = np.flatnonzero(~np.isnan(errors).any(axis=0))
        self.cv_ = lowrank and self.cluster_weight == "cv" and len(complete) >= 3
        if self.cv_:  # (prior without LLM m, m's errors, m's full Psi) for each completely known LLM m
            self.held_out_ = [
                (_Prior.fit(np.delete(errors, m, axis=1), self.rank), errors[:, m], self.known_psi_[m])
                for m in complete
            ]
        weight = self.cluster_weight
        if not lowrank:
            weight = np.inf
        elif weight is None:
            weight = self.noise_var_ / self._cluster_variance(errors)
        elif weight == "cv":
            weight = 15.0  # too few complete known LLMs to choose by: the weight the benchmark chose before
        self.default_setting_ = _Setting(self.factors_.shape[1], float(weight))

    def _cluster_variance(self, errors: np.ndarray) -> float:
        """Between-LLM variance of the per-cluster mean residual around the known LLMs' low-rank fit, less its
        sampling noise (at least 1e-4)."""
        filled = np.where(np.isnan(errors), np.nanmean(errors, axis=0), errors)
        residual = filled - self.difficulty_[:, None]
        residual -= residual.mean(axis=0)
        loadings = np.linalg.lstsq(self.factors_, residual, rcond=None)[0] if self.factors_.size else None
        rest = residual if loadings is None else residual - self.factors_ @ loadings
        mass = self.assignments_.sum(axis=0)
        means = (self.assignments_.T @ rest) / np.maximum(mass, 1e-12)[:, None]  # (K, M)
        noise = self.noise_var_ / np.maximum(effective_counts(self.assignments_), 1.0)
        return float(max(np.mean(means**2 - noise[:, None]), 1e-4))

    def _setting(self, asked: np.ndarray) -> _Setting:
        """The imputation setting for LLMs asked the prompts ``asked`` (n,) bool: leave-one-known-LLM-out's
        choice with ``cv`` (cached per set of asked prompts), else the fixed one."""
        if not self.cv_:
            return self.default_setting_
        key = np.packbits(asked).tobytes()
        if key not in self._settings:
            candidates = [_Setting(r, w) for r in range(self.rank + 1) for w in CV_CLUSTER_WEIGHTS]
            candidates.append(_Setting(0, np.inf, impute=False))
            loss = [self._held_out_loss(c, asked) for c in candidates]
            self._settings[key] = candidates[int(np.argmin(loss))]
        return self._settings[key]

    def _held_out_loss(self, setting: _Setting, asked: np.ndarray) -> float:
        """Mass-weighted squared error of the known LLMs' Psi, each profiled on ``asked`` with a prior from the
        others, against their full Psi."""
        estimates, full = [], []
        for prior, errors, psi in self.held_out_:
            partial = np.where(asked, errors, np.nan)
            if setting.impute:
                partial = self._impute(partial, prior, setting).filled
            estimates.append(llm_error_features(self.assignments_, partial, self.shrinkage)[0])
            full.append(psi)
        return _routing_loss(np.array(estimates), np.array(full), self.assignments_.sum(axis=0), self.pool)

    def _design(self) -> np.ndarray:
        """(n, 1 + rank): the LLM offset's column and the prompts' factor scores."""
        return self.prior_.design()

    def _impute(self, errors: np.ndarray, prior: _Prior | None = None, setting: _Setting | None = None) -> _Imputation:
        """Fill the NaN of one LLM's errors (n,) from the fitted model (or ``prior``) and its observed answers."""
        weights, asked = self.assignments_, ~np.isnan(errors)
        prior = self.prior_ if prior is None else prior
        setting = self._setting(asked) if setting is None else setting
        rank = min(setting.rank, prior.factors.shape[1], int(asked.sum()) // self.answers_per_factor)
        design = prior.design()[:, : 1 + rank]
        x, y = design[asked], errors[asked] - prior.difficulty[asked]
        precision = x.T @ x / prior.noise_var + np.diag(1.0 / prior.prior_var[: 1 + rank])
        beta = np.linalg.solve(precision, x.T @ y / prior.noise_var)
        p = prior.difficulty + design @ beta
        cluster_var = np.zeros(weights.shape[1])
        if np.isfinite(setting.cluster_weight):
            w_asked = weights[asked]
            correction = w_asked.T @ (errors[asked] - p[asked]) / (w_asked.sum(axis=0) + setting.cluster_weight)
            p = p + weights @ correction
            cluster_prior_var = prior.noise_var / setting.cluster_weight
            cluster_var = 1.0 / (1.0 / cluster_prior_var + effective_counts(w_asked) / prior.noise_var)
        p = np.clip(p, _CLIP, 1 - _CLIP)
        beta_cov = np.diag(prior.prior_var)  # the directions not fitted keep their prior's variance
        beta_cov[: 1 + rank, : 1 + rank] = np.linalg.inv(precision)
        return _Imputation(np.where(asked, errors, p), p, cluster_var, beta_cov)

    def estimate(self, errors: np.ndarray, complete: np.ndarray | None = None) -> PartialProfile:
        """Psi of L LLMs from ``errors`` (n,) or (n, L), NaN where not asked. LLMs marked ``complete`` (default:
        those with no NaN) get exactly :func:`llm_error_features`; the others' unasked answers are imputed."""
        if not hasattr(self, "assignments_"):
            raise NotFittedError(self)
        errors = _as_2d("errors", errors)
        n = self.assignments_.shape[0]
        if errors.shape[0] != n:
            raise RouterInputError("errors", errors.shape, f"needs one row per validation prompt ({n})")
        observed = ~np.isnan(errors)
        complete = observed.all(axis=0) if complete is None else np.asarray(complete, dtype=bool)
        if complete.shape != (errors.shape[1],):
            raise RouterInputError("complete", complete.shape, f"needs one flag per LLM ({errors.shape[1]})")
        psi = llm_error_features(self.assignments_, errors, self.shrinkage)  # all at once: bit-for-bit today's
        se = self._sampling_se(psi, effective_counts_per_llm(self.assignments_, observed))
        partial = ~complete if self.imputes_ else np.zeros_like(complete)
        for j in np.flatnonzero(partial):
            if self.method == "irt":
                psi[j], variance = self.irt_.estimate(errors[:, j], observed[:, j])
                full_se = self._sampling_se(psi[j], effective_counts(self.assignments_))
                se[j] = np.sqrt(full_se**2 + variance)
                continue
            setting = self._setting(observed[:, j])
            if setting.impute:
                psi[j], se[j] = self._imputed(self._impute(errors[:, j], setting=setting), observed[:, j])
        return PartialProfile(psi=psi, standard_error=se, asked=observed.sum(axis=0))

    def _sampling_se(self, psi: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Standard error of a per-cluster mean of 0/1 errors over ``counts`` effective prompts (+ the prior's)."""
        counts = counts + self.shrinkage
        variance = np.clip(psi * (1 - psi), 1e-4, None) / np.maximum(counts, 1e-12)
        return np.where(counts > 0, np.sqrt(variance), np.inf)

    def _imputed(self, imputation: _Imputation, asked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Psi with the unasked answers imputed; its standard error adds their uncertainty to the sampling error
        a complete profile would have."""
        psi, full_se = self._plain_full(imputation.filled)
        return psi, np.sqrt(full_se**2 + self._imputation_variance(imputation, asked))

    def _plain_full(self, filled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        psi = llm_error_features(self.assignments_, filled, self.shrinkage)[0]
        return psi, self._sampling_se(psi, effective_counts(self.assignments_))

    def _imputation_variance(self, imputation: _Imputation, asked: np.ndarray) -> np.ndarray:
        """(K,) variance of each cluster's Psi from the unasked answers: their own noise, the uncertainty of the
        LLM's offset and factor scores, and that of the per-cluster correction."""
        weights = self.assignments_
        mass = np.maximum(weights.sum(axis=0) + self.shrinkage, 1e-12)
        unasked = weights[~asked]
        p = imputation.p[~asked]
        noise = (unasked**2).T @ (p * (1 - p))
        loading = unasked.T @ self._design()[~asked]  # (K, 1 + rank)
        model = np.einsum("kr,rs,ks->k", loading, imputation.beta_cov, loading)
        return (noise + model + unasked.sum(axis=0) ** 2 * imputation.cluster_var) / mass**2


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
        weights, errors = _check_pair(assignments, errors)
        self.assignments_ = weights
        self.errors_ = errors
        self.discrimination_ = _discrimination(weights, errors)
        if self.method == "adaptive":
            self.estimator_ = PartialProfileEstimator(method="lowrank").fit(weights, errors)
        return self

    def order(self) -> np.ndarray:
        """(n,) a permutation of the validation prompts' indices, the first to ask first (``adaptive``: the order
        before any answer, that of ``discriminative``)."""
        if not hasattr(self, "assignments_"):
            raise NotFittedError(self)
        rng = np.random.default_rng(self.random_state)
        n = self.assignments_.shape[0]
        if self.method == "random":
            return rng.permutation(n)
        within = rng.permutation(n)  # each cluster's prompts in random order ...
        if self.method != "stratified":  # ... or the most discriminative first (ties at random)
            within = within[np.argsort(-self.discrimination_[within], kind="stable")]
        return _proportional(self.assignments_.argmax(axis=1), within, rng)

    def next_prompts(self, asked: np.ndarray, answers: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` prompt indices to ask, given the indices ``asked`` so far and their ``answers`` (errors);
        only ``adaptive`` uses the answers."""
        if not hasattr(self, "assignments_"):
            raise NotFittedError(self)
        asked = np.asarray(asked, dtype=np.int64).reshape(-1)
        answers = np.asarray(answers, dtype=np.float64).reshape(-1)
        if answers.shape != asked.shape:
            raise RouterInputError("answers", answers.shape, f"needs one error per asked prompt ({asked.shape})")
        total = self.assignments_.shape[0]
        if asked.size and (asked.min() < 0 or asked.max() >= total):
            raise RouterInputError("asked", int(asked[(asked < 0) | (asked >= total)][0]), f"must be in [0, {total})")
        n = int(min(max(n, 0), total - len(set(asked.tolist()))))
        if self.method == "adaptive" and asked.size and self.estimator_.imputes_:
            return self._adaptive(asked, answers, n)
        done = np.zeros(total, dtype=bool)
        done[asked] = True
        order = self.order()
        return order[~done[order]][:n]

    def _adaptive(self, asked: np.ndarray, answers: np.ndarray, n: int) -> np.ndarray:
        """Greedy: the prompt adding most information where the traffic-weighted uncertainty of Psi is largest,
        each pick lowering its clusters' uncertainty as if answered."""
        estimator, weights = self.estimator_, self.assignments_
        errors = np.full(weights.shape[0], np.nan)
        errors[asked] = answers
        imputation = estimator._impute(errors)
        open_ = np.isnan(errors)
        mass = weights.sum(axis=0)
        p = imputation.p
        info = p * (1 - p) * (1 + np.clip(self.discrimination_, 0, None) / (self.discrimination_.max() + 1e-12))
        picks: list[int] = []
        for _ in range(n):
            variance = np.clip(estimator._imputation_variance(imputation, ~open_), 0, None)
            priority = np.where(open_, (weights @ (mass * np.sqrt(variance))) * info, -np.inf)
            i = int(np.argmax(priority))
            picks.append(i)
            open_[i] = False
        return np.asarray(picks, dtype=np.int64)


def effective_counts_per_llm(weights: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(L, K) :func:`effective_counts` of each LLM's observed prompts (``observed``: (n, L) bool)."""
    return np.stack([effective_counts(weights[observed[:, j]]) for j in range(observed.shape[1])])


def _discrimination(weights: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """(n,) how well each prompt separates the known LLMs on its clusters: the covariance, across known LLMs, of
    the prompt's error with their Psi on the prompt's clusters (an item's discrimination, as in item response
    theory; 0 for a prompt every known LLM answers alike)."""
    filled = np.where(np.isnan(errors), np.nanmean(errors, axis=0), errors)
    if filled.shape[1] < 2:
        return np.zeros(filled.shape[0])
    psi = llm_error_features(weights, filled)  # (M, K)
    centred_e = filled - filled.mean(axis=1, keepdims=True)
    centred_psi = psi - psi.mean(axis=0)
    covariance = centred_e @ centred_psi / filled.shape[1]  # (n, K)
    return (weights * covariance).sum(axis=1)


def _proportional(home: np.ndarray, within: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Interleave clusters in proportion to their size: the j-th prompt (in ``within``'s order) of a cluster of
    N prompts comes at (j + u) / N, u uniform per cluster, so any prefix holds each cluster's share."""
    keys = np.empty(len(within))
    offsets = rng.uniform(size=home.max() + 1 if len(home) else 0)
    for k in np.unique(home):
        members = within[home[within] == k]
        keys[members] = (np.arange(len(members)) + offsets[k]) / len(members)
    return within[np.argsort(keys[within], kind="stable")]


def _positive(value: object) -> bool:
    """A number > 0 (not a bool, not NaN)."""
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and value > 0


def _routing_loss(estimates: np.ndarray, full: np.ndarray, mass: np.ndarray, pool: str) -> float:
    """How far estimated Psi (M, K) are from the full ones for routing: the mass-weighted squared error, for
    ``pool="partial"`` after removing what leaves the router's choices unchanged when every LLM's Psi has it (a
    per-cluster shift and one overall scale, which the cost sweep absorbs)."""
    if pool == "mixed":
        return float(mass @ ((estimates - full) ** 2).sum(axis=0))
    x, y = estimates - estimates.mean(axis=0), full - full.mean(axis=0)
    scale = float(mass @ (x * y).sum(axis=0)) / max(float(mass @ (x * x).sum(axis=0)), 1e-12)
    return float(mass @ ((y - scale * x) ** 2).sum(axis=0))
