r"""Online evaluation: how the LLMs a router picks actually do on traffic, against what the router predicted.

A routed request's decision record (``serving/decisions.py``) holds the chosen LLM, the prompt's cluster weights
:math:`\Phi(x)` and the router's predicted error of that LLM; an outcome is a score in [0, 1] for the request
(feedback or a judge), its observed error ``1 - score``. Per LLM and per (LLM, cluster) this module compares the
observed error with the mean predicted error and tests the difference; figures are in :mod:`router_core.plots`.

Why the test is not a plain binomial test: the prediction :math:`\Psi_k(h)` is itself a mean over a finite
validation sample, and the router sends traffic to the LLM whose estimate is *lowest*, so on traffic an
undegraded LLM's error tends to exceed its estimate (the winner's curse). The standard error therefore adds the
prediction's own sampling variance to the traffic's, and the difference must pass an allowance of
``selection_margin`` prediction standard errors first: the estimate that won the router's comparison is
typically about one of its standard errors too optimistic (with ten equally good LLMs and no allowance, z
averages 1.4 on unchanged traffic; tests/router_core/test_online.py simulates it). The variance of a
score in [0, 1] with mean :math:`p` is at most :math:`p(1-p)`, so the Bernoulli variance is used for graded
scores too (conservative).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core.features import validation_counts
from router_core.frames import _first_duplicate, _require_columns

__all__ = [
    "DEFAULT_MIN_COUNT",
    "DEFAULT_SELECTION_MARGIN",
    "DEFAULT_VALIDATION_COUNT",
    "OnlineEvaluation",
    "calibration",
    "drift_alarms",
    "join_outcomes",
    "online_evaluation",
    "quality_vs_cost",
    "validation_count_table",
]

#: Fewest rated requests in a cell before :func:`drift_alarms` may name it.
DEFAULT_MIN_COUNT = 30
#: Validation prompts assumed behind each prediction when none are given: few, so the prediction counts as
#: uncertain and a cell alarms only on a large gap (pass :func:`validation_count_table` for the real ones).
DEFAULT_VALIDATION_COUNT = 20
#: How many of its own standard errors the chosen LLM's estimate is taken to be optimistic by (winner's curse).
DEFAULT_SELECTION_MARGIN = 1.0


@dataclass(frozen=True)
class OnlineEvaluation:
    """:func:`online_evaluation`'s tables: ``by_cluster`` (one row per LLM and cluster with rated traffic) and
    ``by_llm`` (one row per LLM). Columns: ``llm``, (``cluster``,) ``count``, ``observed_error``,
    ``observed_low``/``observed_high`` (its confidence interval), ``predicted_error``, ``difference``
    (observed - predicted), ``allowance`` (the winner's-curse margin), ``se`` (of the difference), ``z``
    ((difference - allowance) / se) and ``validation_count`` (effective validation prompts behind the
    prediction)."""

    by_cluster: pl.DataFrame
    by_llm: pl.DataFrame


def join_outcomes(decisions: pl.DataFrame, outcomes: pl.DataFrame) -> pl.DataFrame:
    """Rated routed requests: ``request_id, llm, cluster, cluster_weights, predicted_error, error,
    realised_cost_usd``.

    Only routed decisions (with ``cluster_weights``) count; ``cluster`` is the argmax of the weights (a hard
    K-means map's weights are one-hot, so that is the cluster the router used). The chosen LLM's predicted error
    is ``ranked_predicted_error[0]`` when it was the router's first choice, else read from the
    ``predicted_error`` JSON (a fallback answered). Decisions must come from one router version (clusters of two
    versions are different things); ``outcomes`` holds one ``score`` in [0, 1] per ``request_id``.
    """
    rated = _routed(decisions).join(_check_outcomes(outcomes), on="request_id", how="inner")
    predicted = _chosen_predictions(rated)
    no_cost = pl.Series([None] * rated.height, dtype=pl.Float64)
    return pl.DataFrame(
        {
            "request_id": rated["request_id"],
            "llm": rated["chosen_llm"],
            "cluster": rated["cluster_weights"].list.arg_max().cast(pl.Int64),
            "cluster_weights": rated["cluster_weights"],
            "predicted_error": pl.Series(predicted, dtype=pl.Float64),
            "error": 1.0 - rated["score"],
            "realised_cost_usd": rated.get_column("realised_cost_usd", default=no_cost),
        }
    )


def _routed(decisions: pl.DataFrame) -> pl.DataFrame:
    columns = ["request_id", "chosen_llm", "cluster_weights", "ranked_llms", "ranked_predicted_error"]
    _require_columns(decisions, "decisions", [*columns, "predicted_error"])
    if dup := _first_duplicate(decisions, ["request_id"]):
        raise RouterInputError("decisions.request_id", dup["request_id"], "duplicate request_id in decisions")
    routed = decisions.filter(pl.col("cluster_weights").is_not_null() & pl.col("chosen_llm").is_not_null())
    if "router_version" in routed.columns and (versions := routed["router_version"].unique().to_list())[1:]:
        raise RouterInputError("router_version", sorted(map(str, versions)), "evaluate one router version at a time")
    sizes = routed["cluster_weights"].list.len().unique().to_list()
    if len(sizes) > 1:
        raise RouterInputError("cluster_weights", sorted(sizes), "decisions disagree on the number of clusters")
    return routed


def _chosen_predictions(rated: pl.DataFrame) -> np.ndarray:
    """The chosen LLM's predicted error in each decision row: the ranking's first when it is the chosen LLM,
    else the ``predicted_error`` JSON's entry."""
    first = pl.col("ranked_llms").list.first() == pl.col("chosen_llm")
    ranked = rated.select(pl.when(first).then(pl.col("ranked_predicted_error").list.first())).to_series()
    predicted = ranked.cast(pl.Float64).to_numpy().copy()
    missing = np.flatnonzero(ranked.is_null().to_numpy())
    for i, row in zip(missing, rated[missing].iter_rows(named=True), strict=True):
        errors = json.loads(row["predicted_error"]) if row["predicted_error"] else {}
        if errors.get(row["chosen_llm"]) is None:
            raise RouterInputError(
                "predicted_error",
                row["chosen_llm"],
                f"no predicted error for chosen LLM {row['chosen_llm']!r} (request_id={row['request_id']!r})",
            )
        predicted[i] = float(errors[row["chosen_llm"]])
    return predicted


def _check_outcomes(outcomes: pl.DataFrame) -> pl.DataFrame:
    _require_columns(outcomes, "outcomes", ["request_id", "score"])
    outcomes = outcomes.select("request_id", pl.col("score").cast(pl.Float64))
    bad = outcomes.filter(pl.col("score").is_null() | pl.col("score").is_nan() | ~pl.col("score").is_between(0, 1))
    if bad.height:
        raise RouterInputError("score", bad["score"][0], f"must be in [0, 1] (request_id={bad['request_id'][0]!r})")
    if dup := _first_duplicate(outcomes, ["request_id"]):
        raise RouterInputError("outcomes.request_id", dup["request_id"], "one outcome per request (combine first)")
    return outcomes


def validation_count_table(assignments: np.ndarray, errors: np.ndarray, llms: Sequence[str]) -> pl.DataFrame:
    r"""Effective validation prompts behind each LLM's per-cluster prediction: ``llm, cluster, validation_count``
    (:func:`router_core.validation_counts` as a frame; a router's shrinkage is not counted, which only overstates
    the prediction's noise). A fitted UniRouter's are
    ``validation_count_table(r.validation_assignments_, r.validation_errors_, r.llms_)``.

    Examples
    --------
    >>> a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> validation_count_table(a, np.array([[0.0], [1.0], [np.nan]]), ["A"])["validation_count"].to_list()
    [2.0, 0.0]
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2 or errors.shape[1] != len(llms):
        raise RouterInputError("errors", errors.shape, f"need (n_prompts, n_llms) with n_llms={len(llms)}")
    count = validation_counts(assignments, errors)  # (M, K)
    m, k = np.meshgrid(np.arange(count.shape[0]), np.arange(count.shape[1]), indexing="ij")
    return pl.DataFrame(
        {"llm": np.asarray(llms)[m.ravel()], "cluster": k.ravel(), "validation_count": count.ravel()}
    ).sort("llm", "cluster")


def online_evaluation(
    decisions: pl.DataFrame,
    outcomes: pl.DataFrame,
    validation: pl.DataFrame | None = None,
    *,
    confidence: float = 0.95,
    selection_margin: float = DEFAULT_SELECTION_MARGIN,
    default_validation_count: float = DEFAULT_VALIDATION_COUNT,
) -> OnlineEvaluation:
    r"""Observed vs predicted error of each LLM on rated traffic, per cluster and overall.

    Per cell with :math:`n` rated requests, observed error :math:`\bar o`, mean predicted error :math:`\bar p`
    and mean cluster weights :math:`\bar w` (one-hot per request: the cell's own cluster), the prediction rests on
    :math:`m = 1 / \sum_k \bar w_k^2 / m_k` effective validation prompts (:math:`m_k` from ``validation``, a
    :func:`validation_count_table` frame; ``default_validation_count`` where it has none; at least 1). With the rate
    pooled under "no change", :math:`p_0 = (n \bar o + m \bar p + 1) / (n + m + 2)`,

    .. math::

        SE^2 = p_0 (1 - p_0) \left(\frac{1}{n} + \frac{1}{m}\right), \qquad
        z = \left(\bar o - \bar p - \mathrm{margin} \sqrt{p_0 (1 - p_0) / m}\right) / SE,

    the allowance (``selection_margin`` prediction SEs) covering the winner's curse (module docstring).
    ``observed_low`` and ``observed_high`` are the Wilson interval of the observed error at ``confidence``.
    """
    if not 0 < confidence < 1:
        raise RouterInputError("confidence", confidence, "must be in (0, 1)")
    if not (selection_margin >= 0 and math.isfinite(selection_margin)):
        raise RouterInputError("selection_margin", selection_margin, "must be a finite number >= 0")
    if not default_validation_count > 0:
        raise RouterInputError("default_validation_count", default_validation_count, "must be > 0")
    joined = join_outcomes(decisions, outcomes)
    k = int(joined["cluster_weights"].list.len().max() or 0)
    counts = _count_matrix(validation, joined["llm"].unique().to_list(), k, default_validation_count)
    args = (joined, counts, k, _quantile(confidence), selection_margin)
    return OnlineEvaluation(by_cluster=_cells(["llm", "cluster"], *args), by_llm=_cells(["llm"], *args))


def _count_matrix(validation: pl.DataFrame | None, llms: list[str], k: int, default: float) -> dict[str, np.ndarray]:
    """Validation counts by LLM as K-vectors (``default`` where ``validation`` is None)."""
    counts = {llm: np.full(k, float(default)) for llm in llms}
    if validation is None:
        return counts
    _require_columns(validation, "validation", ["llm", "cluster", "validation_count"])
    for llm in counts:
        counts[llm] = np.zeros(k)
    for llm, cluster, count in validation.select("llm", "cluster", "validation_count").iter_rows():
        if llm in counts and 0 <= cluster < k:
            counts[llm][cluster] = float(count)
    return counts


def _cells(keys: list[str], joined: pl.DataFrame, counts: dict, k: int, zq: float, margin: float) -> pl.DataFrame:
    """One row per group of ``keys``: counts, observed and predicted error, SE and z (see online_evaluation)."""
    weights = [pl.col("cluster_weights").list.get(j).mean().alias(f"w{j}") for j in range(k)]
    cells = (
        joined.group_by(keys)
        .agg(
            pl.len().alias("count"),
            pl.col("error").mean().alias("observed_error"),
            pl.col("predicted_error").mean(),
            *weights,
        )
        .sort(keys)
    )
    w = cells.select(f"w{j}" for j in range(k)).to_numpy()
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    per_cluster = np.stack([counts[llm] for llm in cells["llm"]]) if cells.height else np.zeros((0, k))
    m = 1.0 / np.maximum((w**2 / np.maximum(per_cluster, 1.0)).sum(axis=1), 1e-12)
    n = cells["count"].to_numpy().astype(np.float64)
    observed, predicted = cells["observed_error"].to_numpy(), cells["predicted_error"].to_numpy()
    p0 = (n * observed + m * predicted + 1.0) / (n + m + 2.0)
    prediction_se = np.sqrt(p0 * (1 - p0) / m)
    se = np.sqrt(p0 * (1 - p0) / n + prediction_se**2)
    low, high = _wilson(observed, n, zq)
    return cells.select(
        *keys,
        pl.col("count").cast(pl.Int64),
        "observed_error",
        observed_low=low,
        observed_high=high,
        predicted_error="predicted_error",
        difference=pl.col("observed_error") - pl.col("predicted_error"),
        allowance=margin * prediction_se,
        se=se,
        z=(observed - predicted - margin * prediction_se) / se,
        validation_count=m,
    )


def _wilson(rate: np.ndarray, n: np.ndarray, zq: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a rate observed over ``n`` trials (NaN where ``n`` is 0)."""
    n = np.where(n > 0, n, np.nan)
    centre = (rate + zq**2 / (2 * n)) / (1 + zq**2 / n)
    half = zq / (1 + zq**2 / n) * np.sqrt(rate * (1 - rate) / n + zq**2 / (4 * n**2))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def drift_alarms(table: pl.DataFrame, z: float = 3.0, min_count: int = DEFAULT_MIN_COUNT) -> pl.DataFrame:
    """The cells of an :class:`OnlineEvaluation` table whose observed error exceeds the predicted by more than
    ``z`` standard errors over at least ``min_count`` rated requests, worst first, each with a one-line
    ``message`` naming the LLM, the cluster (for a ``by_cluster`` table) and the counts.

    Examples
    --------
    >>> row = {"llm": ["llm-b"], "cluster": [3], "count": [212], "observed_error": [0.61], "predicted_error": [0.34],
    ...        "difference": [0.27], "se": [0.066], "z": [4.1]}
    >>> drift_alarms(pl.DataFrame(row))["message"][0]
    'llm-b, cluster 3: observed error 0.61 over 212 requests vs predicted 0.34 (+0.27, 4.1 SE)'
    """
    _require_columns(table, "table", ["llm", "count", "observed_error", "predicted_error", "difference", "z"])
    alarms = table.filter((pl.col("z") > z) & (pl.col("count") >= min_count)).sort("z", descending=True)
    return alarms.with_columns(message=pl.Series([_message(r) for r in alarms.iter_rows(named=True)], dtype=pl.String))


def _message(row: dict) -> str:
    where = "" if row.get("cluster") is None else f", cluster {row['cluster']}"
    return (
        f"{row['llm']}{where}: observed error {row['observed_error']:.2f} over {row['count']} requests vs predicted "
        f"{row['predicted_error']:.2f} ({row['difference']:+.2f}, {row['z']:.1f} SE)"
    )


def calibration(
    decisions: pl.DataFrame, outcomes: pl.DataFrame, bins: int = 10, confidence: float = 0.95
) -> pl.DataFrame:
    """Reliability table: rated requests binned by the chosen LLM's predicted error (``bins`` equal bins of
    [0, 1]; empty bins left out): ``bin, bin_low, bin_high, count, predicted_error`` (mean in the bin),
    ``observed_error, observed_low, observed_high`` (Wilson interval at ``confidence``)."""
    if not (isinstance(bins, int) and bins >= 1):
        raise RouterInputError("bins", bins, "must be an integer >= 1")
    if not 0 < confidence < 1:
        raise RouterInputError("confidence", confidence, "must be in (0, 1)")
    joined = join_outcomes(decisions, outcomes)
    binned = joined.with_columns(bin=(pl.col("predicted_error").clip(0, 1) * bins).floor().clip(0, bins - 1))
    table = (
        binned.group_by(pl.col("bin").cast(pl.Int64))
        .agg(pl.len().alias("count"), pl.col("predicted_error").mean(), pl.col("error").mean().alias("observed_error"))
        .sort("bin")
    )
    n = table["count"].to_numpy().astype(np.float64)
    low, high = _wilson(table["observed_error"].to_numpy(), n, _quantile(confidence))
    return table.select(
        "bin",
        bin_low=pl.col("bin") / bins,
        bin_high=(pl.col("bin") + 1) / bins,
        count="count",
        predicted_error="predicted_error",
        observed_error="observed_error",
    ).with_columns(observed_low=low, observed_high=high)


def _quantile(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def quality_vs_cost(decisions: pl.DataFrame, outcomes: pl.DataFrame, confidence: float = 0.95) -> pl.DataFrame:
    """Per LLM on traffic: ``llm, requests`` (decisions it answered), ``mean_cost_usd`` (their mean realised
    cost), ``rated`` (of them with an outcome), ``observed_score`` (mean score) and ``score_low``/``score_high``
    (Wilson interval at ``confidence``). Named-model requests count too: no prediction is needed here."""
    _require_columns(decisions, "decisions", ["request_id", "chosen_llm", "realised_cost_usd"])
    rated = _check_outcomes(outcomes)
    answered = decisions.filter(pl.col("chosen_llm").is_not_null()).join(rated, on="request_id", how="left")
    table = (
        answered.group_by(pl.col("chosen_llm").alias("llm"))
        .agg(
            pl.len().alias("requests"),
            pl.col("realised_cost_usd").mean().alias("mean_cost_usd"),
            pl.col("score").count().alias("rated"),
            pl.col("score").mean().alias("observed_score"),
        )
        .sort("llm")
    )
    scores = table["observed_score"].fill_null(np.nan).to_numpy()
    low, high = _wilson(scores, table["rated"].to_numpy().astype(float), _quantile(confidence))
    return table.with_columns(score_low=low, score_high=high)
