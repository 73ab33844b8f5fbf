r"""Features from traffic: each LLM's Psi blended with its observed outcomes on traffic, and a held-out check.

A traffic outcome is one served request: the LLM that answered it, the cluster weights :math:`\Phi(x)` the gateway
recorded, and a score in [0, 1] (feedback or a judge; error = 1 - score). Frames of outcomes have the columns

``request_id`` (String), ``chosen_llm`` (String), ``cluster_weights`` (List(Float64), K numbers), ``score`` (Float64)

and must come from decisions made with the same cluster map as the router they feed (same K, same meaning).

Per LLM :math:`h` and cluster :math:`k`, traffic gives the weighted mean error
:math:`\tau_k(h) = \sum_i w_{ik} e_i / \sum_i w_{ik}` over the outcomes :math:`i` it served, with effective count
:math:`m_k(h) = (\sum_i w_{ik})^2 / \sum_i w_{ik}^2` (times :math:`\lambda`, ``weight``, discounting traffic evidence,
e.g. a noisy judge); the validation Psi has precision :math:`n_k(h)` (:func:`router_core.validation_counts`).

Each cell moves part of the way from :math:`\Psi` to :math:`\tau`: the posterior mean of the LLM's error now when
validation's estimate is off from it by its own noise plus a drift of variance :math:`\sigma^2`,

.. math::

    \tilde\Psi_k(h) = \Psi_k(h) + \frac{\sigma^2 + s_v^2}{\sigma^2 + v}\,(\tau_k(h) - \Psi_k(h)),

with :math:`d = \tau - \Psi`, :math:`v = s_v^2 + s_t^2` its noise variance (:math:`s_v^2 = p(1-p)/n`,
:math:`s_t^2 = p(1-p)/m`, :math:`p` the pooled rate). With :math:`\sigma^2 = 0` this is the precision-weighted mean
:math:`\Psi + \frac{m}{n + m}(\tau - \Psi)`: a cluster with few outcomes barely moves, and with none
:math:`\tilde\Psi = \Psi` exactly.

- :math:`\sigma^2` is the *pool's* drift variance (empirical Bayes, method of moments over the cells with traffic):
  :math:`\max(0, \overline{(d - o)^2 - v})`, where :math:`o` is the winner's-curse offset of one validation SE
  (traffic only rates the LLMs the router *chose*, whose estimates won by being low;
  :data:`router_core.online.DEFAULT_SELECTION_MARGIN`, as in :func:`router_core.online_evaluation`). It is 0 when
  traffic agrees with validation within noise, and with fewer than :data:`MIN_DRIFT_CELLS` cells.
- A cell whose own traffic shows that the LLM *changed* (:func:`traffic_changed_cells`) uses its own
  :math:`\sigma^2 = \max(d^2 - v, 0)`: validation is stale there and traffic takes nearly all the weight. A cell
  changed when its traffic error count is in the tail of what an unchanged LLM would give, below
  :math:`\alpha / 2N` over the :math:`N` cells with traffic (Bonferroni, both ways), so in an unchanged pool no cell
  is treated as changed with probability :math:`\ge 1 - \alpha` (``DEFAULT_CHANGE_ALPHA``). The tail is exact at
  small counts: the count's beta-binomial distribution given the validation answers (a Jeffreys prior on the rate,
  shifted up by the winner's-curse offset for "worse"), so one wrong answer against a clean validation record is
  no change.

The held-out check (:func:`compare_on_traffic`) scores routers' predictions on *logged* outcomes: for each held-out
request, the predicted error :math:`\Phi(x)^\top \Psi(h_{served})` of the LLM that actually served it against its
observed error. It is off-policy: only the served LLM's outcome is observed, so it measures how well each router
predicts the LLMs the champion chose, not what another routing would have achieved.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core._hashing import unit_hash
from router_core.coverage import cluster_weight_matrix
from router_core.online import DEFAULT_SELECTION_MARGIN

if TYPE_CHECKING:
    from router_core.routers import UniRouter

__all__ = [
    "DEFAULT_CHANGE_ALPHA",
    "TRAFFIC_OUTCOME_COLUMNS",
    "TrafficComparison",
    "TrafficErrorStats",
    "blend_traffic_features",
    "compare_on_traffic",
    "drop_before_changes",
    "selective_traffic",
    "split_traffic_outcomes",
    "traffic_change_share",
    "traffic_changed_cells",
    "traffic_error_stats",
    "traffic_prediction_loss",
]

#: Familywise level of the change test over a pool's (LLM, cluster) cells: the chance that traffic moves any Psi cell of
#: an unchanged pool (:func:`traffic_change_share`).
DEFAULT_CHANGE_ALPHA = 0.05
TRAFFIC_OUTCOME_COLUMNS = ("request_id", "chosen_llm", "cluster_weights", "score")
Metric = Literal["brier", "log_loss"]


def _require_outcome_columns(outcomes: pl.DataFrame, extra: Sequence[str] = ()) -> None:
    if not isinstance(outcomes, pl.DataFrame):
        raise RouterInputError("outcomes", type(outcomes).__name__, "must be a polars.DataFrame")
    missing = [c for c in [*TRAFFIC_OUTCOME_COLUMNS, *extra] if c not in outcomes.columns]
    if missing:
        raise RouterInputError("outcomes.columns", outcomes.columns, f"missing column(s) {missing}")


def _outcome_arrays(outcomes: pl.DataFrame, n_clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n,) served LLM names, (n, K) cluster weights and (n,) errors of a traffic-outcomes frame, checked."""
    _require_outcome_columns(outcomes)
    if outcomes.height == 0:
        return np.array([], dtype=object), np.zeros((0, n_clusters)), np.zeros(0)
    if outcomes["chosen_llm"].null_count():
        raise RouterInputError("chosen_llm", None, "traffic outcomes contain a null chosen_llm")
    score = outcomes["score"].cast(pl.Float64, strict=False).to_numpy()
    bad = np.isnan(score) | (score < 0) | (score > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RouterInputError(
            "score", outcomes["score"][i], f"must be in [0, 1] (request_id={outcomes['request_id'][i]!r})"
        )
    weights = cluster_weight_matrix(outcomes["cluster_weights"], n_clusters, outcomes["request_id"])
    return outcomes["chosen_llm"].to_numpy().astype(object), weights, 1.0 - score


@dataclass(frozen=True)
class TrafficErrorStats:
    """Sufficient statistics of traffic outcomes per LLM and cluster (rows follow ``llms``)."""

    llms: tuple[str, ...]
    mass: np.ndarray  #: (M, K) sum of cluster weights of the LLM's outcomes
    error_sum: np.ndarray  #: (M, K) sum of weight * error
    square_mass: np.ndarray  #: (M, K) sum of squared weights
    weight: float = 1.0  #: lambda: how many validation prompts one effective traffic outcome is worth

    @property
    def observed_error(self) -> np.ndarray:
        """(M, K) weighted mean error on traffic; NaN where the LLM served nothing in the cluster."""
        return np.divide(self.error_sum, self.mass, out=np.full_like(self.mass, np.nan), where=self.mass > 0)

    @property
    def counts(self) -> np.ndarray:
        """(M, K) precision of the traffic error in validation prompts: ``weight`` x effective count."""
        return self.weight * np.divide(
            self.mass**2, self.square_mass, out=np.zeros_like(self.mass), where=self.square_mass > 0
        )

    def for_llms(self, llms: Sequence[str]) -> TrafficErrorStats:
        """The same statistics with rows for ``llms`` in that order (zeros for an LLM without outcomes)."""
        row = {name: i for i, name in enumerate(self.llms)}
        index = [row.get(name, -1) for name in llms]

        def pick(a: np.ndarray) -> np.ndarray:
            padded = np.vstack([a, np.zeros((1, a.shape[1]))])  # row -1: no outcomes
            return padded[index]

        return TrafficErrorStats(
            tuple(llms), pick(self.mass), pick(self.error_sum), pick(self.square_mass), self.weight
        )

    def only(self, keep: np.ndarray) -> TrafficErrorStats:
        """The same statistics emptied (as if nothing was observed) in the cells where ``keep`` (M, K) is False."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != self.mass.shape:
            raise RouterInputError("keep", keep.shape, f"must have the statistics' shape {self.mass.shape}")
        return TrafficErrorStats(
            self.llms, self.mass * keep, self.error_sum * keep, self.square_mass * keep, self.weight
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named plain arrays (no pickle needed to load them back with :meth:`from_arrays`)."""
        return {
            "traffic_llms": np.array(self.llms, dtype=str),
            "traffic_mass": self.mass,
            "traffic_error_sum": self.error_sum,
            "traffic_square_mass": self.square_mass,
            "traffic_weight": np.array(self.weight),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TrafficErrorStats:
        """Inverse of :meth:`to_arrays`."""
        return cls(
            tuple(str(name) for name in arrays["traffic_llms"]),
            arrays["traffic_mass"],
            arrays["traffic_error_sum"],
            arrays["traffic_square_mass"],
            float(arrays["traffic_weight"]),
        )


def traffic_error_stats(
    outcomes: pl.DataFrame, llms: Sequence[str], n_clusters: int, weight: float = 1.0
) -> TrafficErrorStats:
    """Accumulate traffic outcomes per LLM of ``llms`` and cluster; outcomes of other LLMs are left out.

    >>> frame = pl.DataFrame({"request_id": ["r1", "r2"], "chosen_llm": ["a", "a"],
    ...                       "cluster_weights": [[1.0, 0.0], [0.5, 0.5]], "score": [1.0, 0.0]})
    >>> stats = traffic_error_stats(frame, ["a"], 2)
    >>> stats.observed_error.tolist(), stats.counts.tolist()
    ([[0.3333333333333333, 1.0]], [[1.8, 1.0]])
    """
    if not (np.isfinite(weight) and weight >= 0):
        raise RouterInputError("weight", weight, "must be a finite number >= 0")
    served, w, errors = _outcome_arrays(outcomes, n_clusters)
    rows = {name: i for i, name in enumerate(llms)}
    index = np.array([rows.get(name, -1) for name in served], dtype=np.int64)
    kept = index >= 0
    one_hot = np.zeros((len(rows), len(served)))
    one_hot[index[kept], np.flatnonzero(kept)] = 1.0
    return TrafficErrorStats(tuple(llms), one_hot @ w, one_hot @ (w * errors[:, None]), one_hot @ w**2, float(weight))


def blend_traffic_features(psi: np.ndarray, validation_counts: np.ndarray, stats: TrafficErrorStats) -> np.ndarray:
    r"""(M, K) Psi with traffic, :math:`\Psi + \mathrm{share}\,(\tau - \Psi)` (:func:`traffic_change_share`).

    ``psi`` and ``validation_counts`` are (M, K) with rows in ``stats.llms``' order (use
    :meth:`TrafficErrorStats.for_llms`); where an LLM served nothing in a cluster the result is ``psi`` bit for bit.

    >>> stats = TrafficErrorStats(("a",), np.array([[40.0, 40.0]]), np.array([[12.0, 40.0]]), np.array([[40.0, 40.0]]))
    >>> blend_traffic_features(np.array([[0.2, 0.2]]), np.array([[40.0, 40.0]]), stats).round(3).tolist()
    [[0.25, 0.992]]
    """
    psi = np.asarray(psi, dtype=np.float64)
    share = traffic_change_share(psi, validation_counts, stats)
    return psi + share * (np.where(stats.counts > 0, stats.observed_error, psi) - psi)


def _check_blend_inputs(psi: np.ndarray, counts: np.ndarray, stats: TrafficErrorStats) -> None:
    if psi.shape != stats.mass.shape:
        raise RouterInputError(
            "psi", psi.shape, f"must match the traffic statistics' (LLM, cluster) shape {stats.mass.shape}"
        )
    if counts.shape != psi.shape or (counts < 0).any() or not np.isfinite(counts).all():
        raise RouterInputError("validation_counts", counts.shape, f"must be finite, >= 0 and of shape {psi.shape}")


@dataclass(frozen=True)
class _CellNoise:
    """The cells with traffic (``seen``) and, over them, traffic and validation errors, counts, the validation
    variance ``s_v2`` and the difference's variance ``v`` at the pooled rate."""

    seen: np.ndarray
    tau: np.ndarray
    psi: np.ndarray
    n: np.ndarray
    m: np.ndarray
    s_v2: np.ndarray
    v: np.ndarray


def _cell_noise(psi: np.ndarray, validation_counts: np.ndarray, stats: TrafficErrorStats) -> _CellNoise:
    psi = np.asarray(psi, dtype=np.float64)
    counts = np.asarray(validation_counts, dtype=np.float64)
    _check_blend_inputs(psi, counts, stats)
    seen = stats.counts > 0
    tau, psi_s, n, m = stats.observed_error[seen], psi[seen], counts[seen], stats.counts[seen]
    p = (m * tau + n * psi_s + 1.0) / (m + n + 2.0)  # pooled rate under "unchanged"
    s_v2 = p * (1 - p) / np.maximum(n, 1.0)
    return _CellNoise(seen, tau, psi_s, n, m, s_v2, s_v2 + p * (1 - p) / m)


def traffic_changed_cells(
    psi: np.ndarray,
    validation_counts: np.ndarray,
    stats: TrafficErrorStats,
    alpha: float = DEFAULT_CHANGE_ALPHA,
    selection_margin: float = DEFAULT_SELECTION_MARGIN,
) -> np.ndarray:
    """(M, K) True where an LLM's traffic in a cluster shows it changed (module doc): its error count's exact tail
    under "unchanged" (worse beyond the winner's-curse offset, or better) is below ``alpha`` / (2 x cells with
    traffic), so in an unchanged pool no cell is True with probability >= 1 - ``alpha``."""
    return _changed(_cell_noise(psi, validation_counts, stats), alpha, selection_margin)


def _changed(c: _CellNoise, alpha: float, selection_margin: float) -> np.ndarray:
    """:func:`traffic_changed_cells` on cells whose noise is already worked out."""
    if not 0 < alpha < 1:
        raise RouterInputError("alpha", alpha, "must be in (0, 1)")
    changed = np.zeros(c.seen.shape, dtype=bool)
    if c.seen.any():
        shifted = np.minimum(c.psi + selection_margin * np.sqrt(c.s_v2), 1.0)
        worse = _unchanged_tail(c.tau, c.m, shifted, c.n, upper=True)
        better = _unchanged_tail(c.tau, c.m, c.psi, c.n, upper=False)
        changed[c.seen] = np.minimum(worse, better) < alpha / (2 * c.seen.sum())
    return changed


def traffic_change_share(
    psi: np.ndarray,
    validation_counts: np.ndarray,
    stats: TrafficErrorStats,
    alpha: float = DEFAULT_CHANGE_ALPHA,
    selection_margin: float = DEFAULT_SELECTION_MARGIN,
) -> np.ndarray:
    r"""(M, K) share of the way from Psi to the traffic error, :math:`(\sigma^2 + s_v^2) / (\sigma^2 + v)` (module
    doc): with the cell's own :math:`\sigma^2` where :func:`traffic_changed_cells` says it changed, the pool's drift
    variance elsewhere (0 when traffic agrees with validation: the precision weight :math:`m / (n + m)`); 0 where
    the LLM served nothing in the cluster.

    >>> stats = TrafficErrorStats(("a",), np.array([[40.0, 40.0]]), np.array([[8.0, 40.0]]), np.array([[40.0, 40.0]]))
    >>> traffic_change_share(np.array([[0.2, 0.2]]), np.array([[40.0, 40.0]]), stats).round(2).tolist()
    [[0.5, 0.99]]
    """
    c = _cell_noise(psi, validation_counts, stats)
    changed = _changed(c, alpha, selection_margin)
    share = np.zeros(c.seen.shape)
    if not c.seen.any():
        return share
    d = c.tau - c.psi
    own = np.maximum(d**2 - c.v, 0.0)
    spread = _drift_variance(d - selection_margin * np.sqrt(c.s_v2), c.v)
    sigma2 = np.where(changed[c.seen], own, spread)
    share[c.seen] = (sigma2 + c.s_v2) / (sigma2 + c.v)
    return share


def selective_traffic(
    router: UniRouter,
    stats: TrafficErrorStats,
    confirmed: Iterable[tuple[str, int]] = (),
    alpha: float = DEFAULT_CHANGE_ALPHA,
    selection_margin: float = DEFAULT_SELECTION_MARGIN,
) -> TrafficErrorStats:
    """``stats`` (for ``router``'s pool, cluster map and validation) kept only where a change is established: the
    cells :func:`traffic_changed_cells` flags and the ``confirmed`` (LLM, cluster) cells (asked again and found
    changed: :func:`router_core.paired_change`). Elsewhere validation stands, so a pool whose LLMs did not change
    gets exactly its validation Psi back (blending every cell moved an unchanged pool's AUDC by noise, -0.010 to
    +0.009 over 15 runs of ``benchmarks/traffic_loop.py``). Pass the result to :meth:`UniRouter.use_traffic`."""
    psi, counts = router.traffic_basis()
    llms = list(router.llms_)
    stats = stats.for_llms(llms)
    keep = traffic_changed_cells(psi, counts, stats, alpha, selection_margin)
    for llm, cluster in confirmed:
        if llm in llms and 0 <= int(cluster) < keep.shape[1]:
            keep[llms.index(llm), int(cluster)] = True
    return stats.only(keep)


def drop_before_changes(outcomes: pl.DataFrame, changes: pl.DataFrame) -> pl.DataFrame:
    """``outcomes`` (with ``decided_at``) less those of a changed cell decided before its change was confirmed
    (``changes``: ``llm, cluster, checked_at``, e.g. re-checks found changed): the LLM answered them as it was
    before. A request's cell is its chosen LLM and the argmax of its cluster weights."""
    _require_outcome_columns(outcomes, ["decided_at"])
    if not changes.height:
        return outcomes
    confirmed = changes.group_by("llm", pl.col("cluster").cast(pl.Int64)).agg(pl.col("checked_at").max())
    cell = pl.col("cluster_weights").list.arg_max().cast(pl.Int64).alias("_cluster")
    marked = outcomes.with_columns(cell).join(
        confirmed, left_on=["chosen_llm", "_cluster"], right_on=["llm", "cluster"], how="left"
    )
    stale = pl.col("checked_at").is_not_null() & (pl.col("decided_at") < pl.col("checked_at"))
    return marked.filter(~stale).drop("_cluster", "checked_at")


#: Fewest cells with traffic to estimate the pool's drift variance from (James-Stein's condition for shrinking
#: several means toward a prior: with fewer, one cell's own noise would pass for drift).
MIN_DRIFT_CELLS = 3


def _drift_variance(excess: np.ndarray, v: np.ndarray) -> float:
    """Method-of-moments variance of the cells' true traffic-minus-validation differences beyond the winner's-curse
    offset, ``mean(excess^2 - v)`` floored at 0 (0 with fewer than :data:`MIN_DRIFT_CELLS` cells)."""
    if excess.size < MIN_DRIFT_CELLS:
        return 0.0
    return max(float(np.mean(excess**2 - v)), 0.0)


def _unchanged_tail(tau: np.ndarray, m: np.ndarray, psi: np.ndarray, n: np.ndarray, upper: bool) -> np.ndarray:
    """P(traffic errors >= (``upper``) or <= the observed ``m * tau``) among ``m`` outcomes (rounded) when the error
    rate is the validation's: beta-binomial with the rate's posterior from ``n`` validation prompts of mean ``psi``
    (Jeffreys prior), exact at small counts where a normal approximation would call one wrong answer a change."""
    from scipy.stats import betabinom  # scikit-learn's dependency; imported only when traffic is blended

    trials = np.maximum(np.rint(m), 1).astype(np.int64)
    errors = np.clip(np.rint(tau * trials), 0, trials).astype(np.int64)
    a, b = n * psi + 0.5, n * (1 - psi) + 0.5
    return betabinom.sf(errors - 1, trials, a, b) if upper else betabinom.cdf(errors, trials, a, b)


def split_traffic_outcomes(
    outcomes: pl.DataFrame, heldout_fraction: float = 0.2, salt: str = "uniroute-heldout"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split outcomes into (features, held out) by a hash of ``request_id``: a request always lands on the same side
    (whatever else arrives later, and with all its ratings), about ``heldout_fraction`` of requests held out."""
    if not 0 <= heldout_fraction <= 1:
        raise RouterInputError("heldout_fraction", heldout_fraction, "must be in [0, 1]")
    if "request_id" not in getattr(outcomes, "columns", []):
        raise RouterInputError("outcomes.columns", getattr(outcomes, "columns", None), "missing column 'request_id'")
    held = pl.Series(unit_hash(outcomes["request_id"].to_list(), salt) < heldout_fraction)
    return outcomes.filter(~held), outcomes.filter(held)


def traffic_prediction_loss(
    psi: np.ndarray, llms: Sequence[str], outcomes: pl.DataFrame, metric: Metric = "brier"
) -> np.ndarray:
    """(n,) loss of the predicted error ``cluster_weights . psi[chosen_llm]`` against each outcome's observed error
    (``brier``: squared difference; ``log_loss``: cross-entropy, predictions clipped to [1e-6, 1 - 1e-6]); NaN where
    the served LLM is not among ``llms``."""
    psi = np.asarray(psi, dtype=np.float64)
    if psi.ndim != 2 or psi.shape[0] != len(llms):
        raise RouterInputError("psi", psi.shape, f"must be (n_llms={len(llms)}, n_clusters)")
    if metric not in ("brier", "log_loss"):
        raise RouterInputError("metric", metric, "must be 'brier' or 'log_loss'")
    served, w, errors = _outcome_arrays(outcomes, psi.shape[1])
    rows = {name: i for i, name in enumerate(llms)}
    index = np.array([rows.get(name, -1) for name in served], dtype=np.int64)
    padded = np.vstack([psi, np.full((1, psi.shape[1]), np.nan)])  # row -1: an LLM outside the pool
    predicted = (w * padded[index]).sum(axis=1)
    if metric == "brier":
        return (predicted - errors) ** 2
    p = np.clip(predicted, 1e-6, 1 - 1e-6)
    return -(errors * np.log(p) + (1 - errors) * np.log1p(-p))


@dataclass(frozen=True)
class TrafficComparison:
    """Two routers' prediction losses on the same held-out traffic outcomes (lower is better)."""

    metric: str
    n: int  #: outcomes both routers could score
    n_skipped: int  #: outcomes served by an LLM outside either pool
    champion_loss: float  #: mean loss; NaN when n == 0
    challenger_loss: float
    standard_error: float  #: of the mean paired difference challenger - champion

    @property
    def difference(self) -> float:
        """Challenger's mean loss minus the champion's (> 0: the challenger predicts traffic worse)."""
        return self.challenger_loss - self.champion_loss

    def not_worse(self, tolerance: float = 0.0, z: float = 0.0) -> bool:
        """True when ``difference - z * standard_error <= tolerance``; False without held-out outcomes."""
        return self.n > 0 and self.difference - z * self.standard_error <= tolerance

    def reason(self, tolerance: float = 0.0, z: float = 0.0) -> str:
        """One line for the gate's decision."""
        if self.n == 0:
            return f"no held-out traffic outcomes to compare on ({self.n_skipped} served by LLMs outside a pool)"
        verdict = "not worse" if self.not_worse(tolerance, z) else "worse"
        return (
            f"challenger is {verdict} on {self.n} held-out traffic outcomes: {self.metric} {self.challenger_loss:.4f} "
            f"vs champion {self.champion_loss:.4f} (difference {self.difference:+.4f} +- {self.standard_error:.4f})"
        )


def compare_on_traffic(
    champion: UniRouter, challenger: UniRouter, heldout: pl.DataFrame, metric: Metric = "brier"
) -> TrafficComparison:
    """Score both routers' Psi (``psi_``, ``llms_``) on held-out traffic outcomes, paired per outcome.

    Both routers must share the cluster map whose weights the decisions recorded (true of a challenger built from the
    champion with :meth:`router_core.UniRouter.use_traffic`). Off-policy: see the module doc.
    """
    losses = [traffic_prediction_loss(r.psi_, r.llms_, heldout, metric) for r in (champion, challenger)]
    both = ~np.isnan(losses[0]) & ~np.isnan(losses[1])
    diff = losses[1][both] - losses[0][both]
    n = int(both.sum())
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf") if n == 1 else float("nan")
    mean = [float(loss[both].mean()) if n else float("nan") for loss in losses]
    return TrafficComparison(metric, n, int((~both).sum()), mean[0], mean[1], se)
