"""Cluster maps Phi: prompt embedding -> weights over K prompt clusters (rows sum to 1)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Self

import numpy as np

from router_core._errors import NotFittedError, RouterInputError
from router_core.features import llm_error_features

__all__ = ["DEFAULT_PROMPTS_PER_CLUSTER", "ClusterMap", "KMeansClusterMap", "LearnedClusterMap", "clusters_for"]

#: Training prompts per cluster, on average, below which :func:`clusters_for` lowers K: with the default 60/10
#: train/validation shares about one validation prompt a cluster. 2 to 6 did as well as the best K at 12-384
#: training prompts on MMLU-Pro and a multi-task set (150 seeds); 8 and more fell to one cluster too soon.
DEFAULT_PROMPTS_PER_CLUSTER = 6


def clusters_for(n_prompts: int, n_clusters: int, prompts_per_cluster: int = DEFAULT_PROMPTS_PER_CLUSTER) -> int:
    """The K to fit on ``n_prompts`` training prompts: ``n_clusters``, lowered so that a cluster holds
    ``prompts_per_cluster`` of them on average, but at least 2 where there are 2 prompts (one cluster is
    prompt-blind, and 2 beat it even on 9 training prompts). A small prompt set gets fewer, better-estimated
    clusters instead of a map that cannot be fitted (K > n) or whose clusters hold no validation prompt."""
    checks = (
        ("n_prompts", n_prompts, 0),
        ("n_clusters", n_clusters, 1),
        ("prompts_per_cluster", prompts_per_cluster, 1),
    )
    for name, value, least in checks:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise RouterInputError(name, value, f"must be an integer >= {least}")
    return int(max(1, min(2, n_prompts, n_clusters), min(n_clusters, n_prompts // prompts_per_cluster)))


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax (scipy.special.softmax's, without importing scipy)."""
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def check_embeddings(embeddings: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Return ``embeddings`` as a finite (n, d) float array, or raise naming what is wrong."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0:
        raise RouterInputError("embeddings", x.shape, "must be a non-empty 2-D array (n_prompts, dim)")
    if dim is not None and x.shape[1] != dim:
        raise RouterInputError("embeddings", x.shape, f"expected dimension {dim}, as at fit time")
    if not np.isfinite(x).all():
        raise RouterInputError("embeddings", "NaN/inf", "must be finite")
    return x.astype(np.float64, copy=False)


class ClusterMap(ABC):
    """Base class: ``fit`` on training prompts, ``transform`` to an (n, K) assignment matrix."""

    n_clusters: int

    @abstractmethod
    def fit(self, embeddings: np.ndarray, errors: np.ndarray | None = None) -> Self:
        """Fit on training-prompt embeddings (and, for learned maps, training LLMs' errors)."""

    @abstractmethod
    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, K) cluster weights, rows summing to 1."""

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-serialisable)."""

    @abstractmethod
    def get_arrays(self) -> dict[str, np.ndarray]:
        """Fitted state as named arrays."""

    @abstractmethod
    def set_arrays(self, arrays: dict[str, np.ndarray]) -> Self:
        """Restore fitted state from ``get_arrays()``."""

    def _check_k(self, n_prompts: int) -> None:
        if not isinstance(self.n_clusters, int | np.integer) or self.n_clusters < 1:
            raise RouterInputError("n_clusters", self.n_clusters, "must be an integer >= 1")
        if self.n_clusters > n_prompts:
            raise RouterInputError("n_clusters", self.n_clusters, f"exceeds the {n_prompts} training prompts")


class KMeansClusterMap(ClusterMap):
    """Hard clusters from K-means on training prompts (the paper's UniRoute-KMeans).

    Parameters
    ----------
    n_clusters : int
        K.
    seed : int
        K-means initialisation seed (the map is deterministic given it).
    temperature : float or None
        ``None``: hard one-hot assignment to the nearest centroid. A positive value gives soft assignments
        ``softmax(-||e - c_k||^2 / temperature)``.
    """

    def __init__(self, n_clusters: int = 16, seed: int = 0, temperature: float | None = None) -> None:
        self.n_clusters = n_clusters
        self.seed = seed
        self.temperature = temperature

    def fit(self, embeddings: np.ndarray, errors: np.ndarray | None = None) -> Self:
        """Run K-means on the training embeddings; ``errors`` is ignored."""
        x = check_embeddings(embeddings)
        self._check_k(x.shape[0])
        if self.temperature is not None and not self.temperature > 0:
            raise RouterInputError("temperature", self.temperature, "must be > 0 or None")
        from sklearn.cluster import KMeans  # here, not at import: a Dagster run that never fits one skips ~1 s

        km = KMeans(n_clusters=self.n_clusters, n_init=4, random_state=self.seed).fit(x)
        self.centroids_ = km.cluster_centers_
        return self

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        if not hasattr(self, "centroids_"):
            raise NotFittedError(self)
        x = check_embeddings(embeddings, self.centroids_.shape[1])
        sq_dist = (x**2).sum(1)[:, None] - 2 * x @ self.centroids_.T + (self.centroids_**2).sum(1)[None, :]
        if self.temperature is None:
            return np.eye(self.n_clusters)[sq_dist.argmin(axis=1)]
        return _softmax(-sq_dist / self.temperature)

    def get_params(self) -> dict[str, Any]:
        return {"n_clusters": self.n_clusters, "seed": self.seed, "temperature": self.temperature}

    def get_arrays(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "centroids_"):
            raise NotFittedError(self)
        return {"centroids": self.centroids_}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> Self:
        self.centroids_ = arrays["centroids"]
        return self


class LearnedClusterMap(ClusterMap):
    r"""The paper's learned soft cluster map :math:`\Phi(x) = \mathrm{softmax}(W e(x) + b)`.

    Training (on training prompts and the *training* LLMs only):

    1. K-means on the training embeddings gives centroids :math:`c_k`; the training LLMs' per-cluster errors
       :math:`\Psi(h)` are computed on the training prompts with those hard clusters.
    2. :math:`W, b` start at the K-means map, :math:`W_k = 2\beta c_k`, :math:`b_k = -\beta \|c_k\|^2`
       (then :math:`\Phi` is a softmax over :math:`-\beta\|e - c_k\|^2`, i.e. soft nearest-centroid).
    3. With :math:`\Psi` fixed, :math:`W, b` minimise the log-loss of predicting each training LLM's error
       on each training prompt by :math:`p(x, h) = \Phi(x)^\top \Psi(h)`, plus
       ``l2 * ||W - W_0||^2`` (L-BFGS).

    A new LLM then needs only its validation errors: its :math:`\Psi` comes from :math:`\Phi` of the
    validation prompts, with no retraining of the map.

    Parameters
    ----------
    n_clusters : int
        K.
    seed : int
        Seed of the K-means initialisation; the fit is deterministic given it.
    init_sharpness : float
        :math:`\beta` of the K-means initialisation.
    l2 : float
        Strength of the pull of :math:`W` toward its K-means initialisation.
    max_iter : int
        L-BFGS iterations.
    """

    def __init__(
        self,
        n_clusters: int = 16,
        seed: int = 0,
        init_sharpness: float = 10.0,
        l2: float = 1e-2,
        max_iter: int = 200,
    ) -> None:
        self.n_clusters = n_clusters
        self.seed = seed
        self.init_sharpness = init_sharpness
        self.l2 = l2
        self.max_iter = max_iter

    def fit(self, embeddings: np.ndarray, errors: np.ndarray | None = None) -> Self:
        """Fit on training embeddings (n, d) and the training LLMs' errors (n, M) on those prompts."""
        x = check_embeddings(embeddings)
        if errors is None:
            raise RouterInputError("errors", None, "LearnedClusterMap needs the training LLMs' errors")
        errors = np.asarray(errors, dtype=np.float64)
        if errors.ndim != 2 or errors.shape[0] != x.shape[0]:
            raise RouterInputError("errors", errors.shape, f"must be ({x.shape[0]}, n_training_llms)")
        self._check_k(x.shape[0])
        kmeans = KMeansClusterMap(self.n_clusters, seed=self.seed).fit(x)
        psi = np.clip(llm_error_features(kmeans.transform(x), errors), 1e-3, 1 - 1e-3)  # (M, K)
        centroids = kmeans.centroids_
        w0 = 2 * self.init_sharpness * centroids
        b0 = -self.init_sharpness * (centroids**2).sum(1)
        observed = ~np.isnan(errors)
        target = np.where(observed, errors, 0.0)
        n_obs = observed.sum()
        k, d = w0.shape

        def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[: k * d].reshape(k, d), theta[k * d :]
            phi = _softmax(x @ w.T + b)
            p = np.clip(phi @ psi.T, 1e-6, 1 - 1e-6)
            nll = -(target * np.log(p) + (1 - target) * np.log1p(-p))
            dw_reg = w - w0
            loss = (nll * observed).sum() / n_obs + self.l2 * (dw_reg**2).sum()
            d_p = observed * (p - target) / (p * (1 - p)) / n_obs
            d_phi = d_p @ psi
            d_z = phi * (d_phi - (phi * d_phi).sum(1, keepdims=True))
            grad_w = d_z.T @ x + 2 * self.l2 * dw_reg
            return float(loss), np.concatenate([grad_w.ravel(), d_z.sum(0)])

        theta0 = np.concatenate([w0.ravel(), b0])
        self.init_loss_ = loss_and_grad(theta0)[0]
        from scipy.optimize import minimize

        result = minimize(
            loss_and_grad,
            theta0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        self.weights_ = result.x[: k * d].reshape(k, d)
        self.bias_ = result.x[k * d :]
        self.train_loss_ = float(result.fun)  # compare with init_loss_ (the K-means start)
        return self

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise NotFittedError(self)
        x = check_embeddings(embeddings, self.weights_.shape[1])
        return _softmax(x @ self.weights_.T + self.bias_)

    def get_params(self) -> dict[str, Any]:
        return {
            "n_clusters": self.n_clusters,
            "seed": self.seed,
            "init_sharpness": self.init_sharpness,
            "l2": self.l2,
            "max_iter": self.max_iter,
        }

    def get_arrays(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "weights_"):
            raise NotFittedError(self)
        return {"weights": self.weights_, "bias": self.bias_}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> Self:
        self.weights_, self.bias_ = arrays["weights"], arrays["bias"]
        return self
