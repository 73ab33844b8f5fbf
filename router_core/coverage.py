r"""Coverage drift: does the validation set still look like the traffic, and which stored prompts to add if not.

Two measures, both defined through the router's cluster map :math:`\Phi` so they work for the hard K-means map and
the learned soft map alike:

* **Shares.** The validation set's share of cluster :math:`k` is the mean of :math:`\Phi_k` over validation prompts;
  the traffic's is the same mean over the cluster weights the gateway recorded in its decisions (no text needed).
  Their distance is the total variation :math:`\tfrac12 \sum_k |t_k - v_k|` (the share of traffic that would have to
  move to another cluster to look like the validation set); ``share_ratio`` gives :math:`t_k / v_k` per cluster.
* **Far prompts.** Each cluster's centre is the :math:`\Phi`-weighted mean of the validation embeddings (for a hard
  map: the mean of its validation prompts); a prompt's distance is its Euclidean distance to the nearest centre. The
  threshold is the ``quantile`` (0.99) of the validation prompts' own distances, so traffic drawn like the validation
  set has about 1% of its prompts beyond it. Only sampled traffic has text to embed, so this share is measured on the
  sample alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core._hashing import unit_hash
from router_core.cluster_maps import check_embeddings

__all__ = [
    "DEFAULT_FAR_BOUND",
    "DEFAULT_MIN_PROMPTS",
    "DEFAULT_QUANTILE",
    "CoverageReference",
    "CoverageReport",
    "cluster_weight_matrix",
    "coverage_report",
    "stratified_traffic_sample",
]

DEFAULT_QUANTILE = 0.99  # a prompt is "far" when it is farther from every centre than 99% of validation prompts
DEFAULT_FAR_BOUND = 0.05  # 5x the far share of traffic drawn like the validation set
DEFAULT_MIN_PROMPTS = 100  # fewer prompts than this: a measure is noise and cannot call drift


def check_cluster_weights(name: str, weights: np.ndarray, n_clusters: int | None = None) -> np.ndarray:
    """Return ``weights`` as a finite (n, K) float array of non-negative rows summing to 1, or raise naming it."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] == 0:
        raise RouterInputError(name, w.shape, "must be a non-empty 2-D array (n_prompts, n_clusters)")
    if n_clusters is not None and w.shape[1] != n_clusters:
        raise RouterInputError(name, w.shape, f"expected {n_clusters} clusters (a different cluster map?)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise RouterInputError(name, "NaN/inf/negative", "cluster weights must be finite and >= 0")
    sums = w.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = int(np.flatnonzero(~np.isclose(sums, 1.0, atol=1e-6))[0])
        raise RouterInputError(name, float(sums[bad]), f"row {bad} does not sum to 1")
    return w


def cluster_weight_matrix(weights: pl.Series, n_clusters: int, ids: pl.Series | None = None) -> np.ndarray:
    """A ``List(Float64)`` column of K cluster weights per row (decision records' ``cluster_weights``) as a checked
    (n, K) array; a null or wrong-length row is an error naming its id (filter null rows, i.e. requests routed
    without clusters, and other router versions' decisions first)."""
    lengths = weights.list.len().fill_null(-1).to_numpy()
    if len(weights) and (lengths != n_clusters).any():
        i = int(np.flatnonzero(lengths != n_clusters)[0])
        where = f"request_id={ids[i]!r}" if ids is not None else f"row {i}"
        raise RouterInputError(
            "cluster_weights", int(lengths[i]), f"needs {n_clusters} weights ({where}; -1: null; another cluster map?)"
        )
    matrix = np.array(weights.to_list(), dtype=np.float64).reshape(len(weights), n_clusters)
    return check_cluster_weights("cluster_weights", matrix, n_clusters) if len(weights) else matrix


@dataclass(frozen=True)
class CoverageReport:
    """Traffic against the validation set (:meth:`CoverageReference.report`); numbers, then a decision."""

    validation_share: np.ndarray  #: (K,) mean Phi of the validation prompts
    traffic_share: np.ndarray  #: (K,) mean Phi of the traffic's decisions
    n_validation: int
    n_traffic: int  #: decisions counted in ``traffic_share``
    far_threshold: float  #: distance to the nearest centre beyond which a prompt is far
    quantile: float  #: share of validation prompts within ``far_threshold``
    n_embedded: int  #: sampled traffic prompts whose distance was measured
    far_share: float | None  #: share of them beyond ``far_threshold``; None when none were embedded
    far_by_cluster: np.ndarray  #: (K,) far traffic prompts counted by their nearest centre

    @property
    def total_variation(self) -> float:
        """Half the L1 distance between the traffic's and the validation set's cluster shares, in [0, 1]."""
        return float(0.5 * np.abs(self.traffic_share - self.validation_share).sum())

    @property
    def null_total_variation(self) -> float:
        r"""About the total variation that sampling alone gives when traffic is drawn like the validation set:
        :math:`\sqrt{2/\pi}\,\tfrac12 \sum_k \sqrt{v_k(1-v_k)(1/n_t + 1/n_v)}` (hard clusters; soft weights vary
        less, so it is an upper estimate). A ``bound`` well above it (2-3x) does not fire on noise."""
        v = self.validation_share
        spread = np.sqrt(v * (1 - v) * (1 / max(self.n_traffic, 1) + 1 / max(self.n_validation, 1)))
        return float(np.sqrt(2 / np.pi) * 0.5 * spread.sum())

    @property
    def share_ratio(self) -> np.ndarray:
        """(K,) traffic share / validation share (inf: traffic in a cluster with no validation weight; NaN: 0/0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.traffic_share / self.validation_share

    def drifted(
        self, bound: float, far_bound: float = DEFAULT_FAR_BOUND, min_prompts: int = DEFAULT_MIN_PROMPTS
    ) -> bool:
        """True when the total variation exceeds ``bound`` or the far share exceeds ``far_bound``; each measure
        needs ``min_prompts`` prompts of its own (decisions; embedded samples) to count."""
        return bool(self._findings(bound, far_bound, min_prompts))

    def reason(self, bound: float, far_bound: float = DEFAULT_FAR_BOUND, min_prompts: int = DEFAULT_MIN_PROMPTS) -> str:
        """One line saying why :meth:`drifted` decides as it does, naming the clusters that drifted."""
        findings = self._findings(bound, far_bound, min_prompts)
        if findings:
            return "coverage drifted: " + "; ".join(findings)
        if self.n_traffic < min_prompts:
            return f"too little traffic to judge coverage: {self.n_traffic} decisions < {min_prompts}"
        far = "not measured" if self.far_share is None else f"{self.far_share:.1%} of {self.n_embedded} sampled"
        return (
            f"coverage holds: total variation {self.total_variation:.3f} <= {bound} over {self.n_traffic} decisions; "
            f"far prompts {far} (bound {far_bound:.1%})"
        )

    def _findings(self, bound: float, far_bound: float, min_prompts: int) -> list[str]:
        for name, value in (("bound", bound), ("far_bound", far_bound)):
            if not 0 <= value <= 1:
                raise RouterInputError(name, value, "must be in [0, 1]")
        findings = []
        if self.n_traffic >= min_prompts and self.total_variation > bound:
            excess = self.traffic_share - self.validation_share
            top = [k for k in np.argsort(-excess, kind="stable")[:3] if excess[k] > 0]
            named = ", ".join(
                f"cluster {k} has {self.traffic_share[k]:.0%} of traffic vs {self.validation_share[k]:.0%} of "
                "validation"
                for k in top
            )
            findings.append(f"total variation {self.total_variation:.3f} > {bound} ({named})")
        if self.far_share is not None and self.n_embedded >= min_prompts and self.far_share > far_bound:
            near = [k for k in np.argsort(-self.far_by_cluster, kind="stable")[:3] if self.far_by_cluster[k] > 0]
            named = ", ".join(f"cluster {k} ({int(self.far_by_cluster[k])})" for k in near)
            findings.append(
                f"{self.far_share:.1%} of {self.n_embedded} sampled prompts are farther from every cluster than "
                f"{self.quantile:.0%} of validation prompts (> {far_bound:.1%}; nearest: {named})"
            )
        return findings

    def to_frame(self) -> pl.DataFrame:
        """One row per cluster: ``cluster, validation_share, traffic_share, share_ratio, far_prompts``."""
        return pl.DataFrame(
            {
                "cluster": np.arange(len(self.traffic_share)),
                "validation_share": self.validation_share,
                "traffic_share": self.traffic_share,
                "share_ratio": self.share_ratio,
                "far_prompts": self.far_by_cluster.astype(np.int64),
            }
        )

    def summary(self) -> dict[str, Any]:
        """The scalar measures as plain Python numbers (e.g. for run metadata)."""
        return {
            "total_variation": self.total_variation,
            "null_total_variation": self.null_total_variation,
            "far_share": self.far_share,
            "far_threshold": self.far_threshold,
            "n_traffic": self.n_traffic,
            "n_embedded": self.n_embedded,
            "n_validation": self.n_validation,
        }


@dataclass(frozen=True)
class CoverageReference:
    """What traffic is compared with: the validation set's cluster shares, cluster centres and far threshold.

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [0.0, 0.2], [10.0, 0.0], [10.0, 0.2]])
    >>> ref = CoverageReference.from_validation(np.eye(2)[[0, 0, 1, 1]], x)
    >>> ref.centres.tolist(), round(ref.far_threshold, 3)
    ([[0.0, 0.1], [10.0, 0.1]], 0.1)
    >>> ref.report(np.eye(2)[[1, 1]], np.array([[10.0, 0.1], [5.0, 5.0]])).far_share
    0.5
    """

    validation_share: np.ndarray  #: (K,)
    centres: np.ndarray  #: (K, d); NaN rows for clusters without validation weight
    far_threshold: float
    quantile: float
    n_validation: int

    @classmethod
    def from_validation(
        cls, weights: np.ndarray, embeddings: np.ndarray, quantile: float = DEFAULT_QUANTILE
    ) -> CoverageReference:
        """Build from the validation prompts' cluster weights (n_val, K) and embeddings (n_val, d)."""
        x = check_embeddings(embeddings)
        w = check_cluster_weights("validation_weights", weights)
        if w.shape[0] != x.shape[0]:
            raise RouterInputError("validation_weights", w.shape, f"needs one row per embedding ({x.shape[0]})")
        if not 0 < quantile < 1:
            raise RouterInputError("quantile", quantile, "must be in (0, 1)")
        mass = w.sum(axis=0)
        centres = np.full((w.shape[1], x.shape[1]), np.nan)
        centres[mass > 0] = (w.T @ x)[mass > 0] / mass[mass > 0, None]
        reference = cls(w.mean(axis=0), centres, np.inf, quantile, x.shape[0])
        threshold = float(np.quantile(reference.nearest(x)[0], quantile))
        return cls(reference.validation_share, centres, threshold, quantile, x.shape[0])

    def nearest(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) Euclidean distance of each prompt to its nearest cluster centre, and (n,) that centre's index."""
        x = check_embeddings(embeddings, self.centres.shape[1])
        kept = np.flatnonzero(~np.isnan(self.centres[:, 0]))
        c = self.centres[kept]
        sq = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
        best = sq.argmin(axis=1)
        return np.sqrt(np.clip(sq[np.arange(len(x)), best], 0.0, None)), kept[best]

    def report(self, traffic_weights: np.ndarray, traffic_embeddings: np.ndarray | None = None) -> CoverageReport:
        """Compare traffic with the validation set: ``traffic_weights`` (n, K) from the decisions, and the
        embeddings of the sampled traffic prompts (any number, or None when nothing is sampled)."""
        t = check_cluster_weights("traffic_weights", traffic_weights, len(self.validation_share))
        far_by_cluster = np.zeros(len(self.validation_share))
        far_share, n_embedded = None, 0
        if traffic_embeddings is not None and len(traffic_embeddings):
            distance, nearest = self.nearest(traffic_embeddings)
            far = distance > self.far_threshold
            far_share, n_embedded = float(far.mean()), len(distance)
            far_by_cluster = np.bincount(nearest[far], minlength=len(far_by_cluster)).astype(np.float64)
        return CoverageReport(
            validation_share=self.validation_share,
            traffic_share=t.mean(axis=0),
            n_validation=self.n_validation,
            n_traffic=t.shape[0],
            far_threshold=self.far_threshold,
            quantile=self.quantile,
            n_embedded=n_embedded,
            far_share=far_share,
            far_by_cluster=far_by_cluster,
        )


def coverage_report(
    validation_weights: np.ndarray,
    validation_embeddings: np.ndarray,
    traffic_weights: np.ndarray,
    traffic_embeddings: np.ndarray | None = None,
    quantile: float = DEFAULT_QUANTILE,
) -> CoverageReport:
    """:meth:`CoverageReference.from_validation` then :meth:`CoverageReference.report`, in one call."""
    reference = CoverageReference.from_validation(validation_weights, validation_embeddings, quantile)
    return reference.report(traffic_weights, traffic_embeddings)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (ties to the lower index)."""
    quota = total * weights / weights.sum()
    out = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - out), kind="stable")
    out[order[: total - out.sum()]] += 1
    return out


def _allocate(n: int, priorities: Sequence[np.ndarray], available: np.ndarray) -> np.ndarray:
    """How many prompts to take per cluster: ``n`` shared by the first priority weights, capped by what each cluster
    has; what a cap leaves goes by the same weights, then by the next ones."""
    target = np.zeros(len(available), dtype=np.int64)
    remaining = min(n, int(available.sum()))
    for weights in (*priorities, available.astype(np.float64)):
        while remaining > 0:
            room = available - target
            w = np.where(room > 0, weights, 0.0)
            if w.sum() <= 0:
                break
            take = np.minimum(_largest_remainder(remaining, w), room)
            target += take
            remaining -= int(take.sum())
    return target


def stratified_traffic_sample(
    request_ids: Sequence[str],
    traffic_weights: np.ndarray,
    n: int,
    report: CoverageReport,
    distances: np.ndarray | None = None,
    seed: int = 0,
    far_weight: float = 4.0,
) -> pl.DataFrame:
    r"""Choose ``n`` stored traffic prompts to add to the validation set, stratified by cluster.

    Each candidate's stratum is its heaviest cluster. Strata get shares of ``n`` in proportion to their deficit
    :math:`\max(0,\ t_k (N + n) - v_k N)` (``t``, ``v``: the report's traffic and validation shares, ``N`` its
    validation prompts), i.e. what brings the grown validation set closest to the traffic's shares; a stratum with
    too few candidates passes its share on to the others. Within a stratum, prompts are drawn without replacement
    (Efraimidis-Spirakis keys from a hash of ``seed`` and the request id), a far prompt (``distances`` beyond the
    report's threshold) ``far_weight`` times as likely as another. The choice depends only on the inputs as a set:
    the same ids, weights and seed give the same prompts in any row order.

    Parameters
    ----------
    request_ids : sequence of str
        Ids of the stored traffic prompts (unique).
    traffic_weights : (m, K) array
        Their cluster weights.
    n : int
        How many to choose (all candidates when there are fewer).
    report : CoverageReport
        The coverage report that called for the sample.
    distances : (m,) array or None
        Each candidate's distance to its nearest centre (:meth:`CoverageReference.nearest`); None: none is far.
    seed : int
        Another seed draws another sample.
    far_weight : float
        How much more likely a far prompt is drawn than a near one (>= 1).

    Returns
    -------
    polars.DataFrame
        ``request_id, cluster, far``: the chosen prompts, in input order.
    """
    w = check_cluster_weights("traffic_weights", traffic_weights, len(report.traffic_share))
    ids = pl.Series("request_id", list(request_ids), dtype=pl.String)
    if len(ids) != w.shape[0]:
        raise RouterInputError("request_ids", len(ids), f"needs one id per row of traffic_weights ({w.shape[0]})")
    if ids.is_duplicated().any():
        raise RouterInputError("request_id", ids.filter(ids.is_duplicated())[0], "duplicate request id")
    if not isinstance(n, int | np.integer) or n < 0:
        raise RouterInputError("n", n, "must be an integer >= 0")
    if not far_weight >= 1:
        raise RouterInputError("far_weight", far_weight, "must be >= 1")
    far = np.zeros(len(ids), dtype=bool)
    if distances is not None:
        distances = np.asarray(distances, dtype=np.float64)
        if distances.shape != (len(ids),):
            raise RouterInputError("distances", distances.shape, f"needs one distance per prompt ({len(ids)})")
        far = distances > report.far_threshold
    cluster = w.argmax(axis=1)
    available = np.bincount(cluster, minlength=w.shape[1])
    total = report.n_validation + min(n, len(ids))
    deficit = np.clip(report.traffic_share * total - report.validation_share * report.n_validation, 0.0, None)
    target = _allocate(n, [deficit, report.traffic_share], available)
    key = np.log(np.clip(unit_hash(ids.to_list(), f"traffic-sample:{seed}"), 1e-300, None)) / np.where(
        far, far_weight, 1.0
    )
    chosen = np.zeros(len(ids), dtype=bool)
    for k in np.flatnonzero(target):
        members = np.flatnonzero(cluster == k)
        chosen[members[np.argsort(-key[members], kind="stable")[: target[k]]]] = True
    return pl.DataFrame({"request_id": ids, "cluster": cluster, "far": far}).filter(pl.Series(chosen))
