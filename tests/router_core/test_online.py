"""Online evaluation on traffic: observed vs predicted error per LLM and cluster, drift alarms, calibration.

The simulations draw a router's Psi from a finite validation sample, let it route to the argmin (so the chosen
LLM's estimate is optimistic: the winner's curse) and draw traffic outcomes from the true error rates."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from router_core import (
    RouterInputError,
    calibration,
    drift_alarms,
    online_evaluation,
    quality_vs_cost,
    validation_count_table,
)

N_LLMS, N_CLUSTERS = 10, 8


def _decisions(llms, weights, predicted, cost=None, ranked=None, predicted_json=None) -> pl.DataFrame:
    n = len(llms)
    frame = pl.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "router_version": ["v1"] * n,
            "chosen_llm": list(llms),
            "cluster_weights": pl.Series(weights).cast(pl.List(pl.Float64))
            if isinstance(weights, np.ndarray)
            else [None if w is None else [float(x) for x in w] for w in weights],
            "predicted": np.asarray(predicted, dtype=np.float64),
            "predicted_error": predicted_json or ["{}"] * n,
            "realised_cost_usd": np.full(n, 0.001) if cost is None else np.asarray(cost, dtype=np.float64),
        },
        schema_overrides={"cluster_weights": pl.List(pl.Float64)},
    )
    ranked_llms = pl.Series(ranked, dtype=pl.List(pl.String)) if ranked else pl.concat_list("chosen_llm")
    return frame.with_columns(ranked_llms=ranked_llms, ranked_predicted_error=pl.concat_list("predicted")).drop(
        "predicted"
    )


def _outcomes(errors) -> pl.DataFrame:
    return pl.DataFrame({"request_id": [f"r{i}" for i in range(len(errors))], "score": 1.0 - np.asarray(errors)})


def _simulate(seed: int, n_val: int = 50, n_traffic: int = 6000, degrade: tuple | None = None, tied: bool = False):
    """Decisions, outcomes and validation counts of one simulated deployment (near-tied LLMs: a strong curse;
    ``tied``: all LLMs equally good everywhere and no cost weight, the strongest)."""
    rng = np.random.default_rng(seed)
    true = np.clip(rng.uniform(0.25, 0.6, N_LLMS)[:, None] + rng.normal(0, 0.02, (N_LLMS, N_CLUSTERS)), 0.02, 0.95)
    true = np.full_like(true, 0.4) if tied else true
    psi = rng.binomial(n_val, true) / n_val  # the router's estimate from n_val validation prompts per cluster
    cost = rng.uniform(0, 1, N_LLMS)
    cost_weight = rng.choice([0.0, 0.05, 0.1, 0.2], n_traffic)  # budgets spread a cluster over a few LLMs
    cost_weight = cost_weight * (not tied)
    cluster = rng.integers(0, N_CLUSTERS, n_traffic)
    chosen = (psi[:, cluster].T + cost_weight[:, None] * cost).argmin(axis=1)
    if degrade is not None:
        llm, k, by = degrade
        true[llm, k] = min(true[llm, k] + by, 1.0)
    errors = (rng.random(n_traffic) < true[chosen, cluster]).astype(float)
    names = [f"llm-{j}" for j in range(N_LLMS)]
    decisions = _decisions(np.array(names)[chosen], np.eye(N_CLUSTERS)[cluster], psi[chosen, cluster])
    counts = pl.DataFrame(
        [(m, k, float(n_val)) for m in names for k in range(N_CLUSTERS)],
        schema=["llm", "cluster", "validation_count"],
        orient="row",
    )
    return decisions, _outcomes(errors), counts


def _false_alarms(seeds, **kwargs) -> tuple[int, int]:
    """(alarms, cells with enough traffic) over simulated deployments with no degradation."""
    alarms = cells = 0
    for seed in seeds:
        decisions, outcomes, counts = _simulate(seed)
        table = online_evaluation(decisions, outcomes, counts if kwargs.pop("counts", True) else None, **kwargs)
        alarms += drift_alarms(table.by_cluster).height
        cells += table.by_cluster.filter(pl.col("count") >= 30).height
    return alarms, cells


def test_an_undegraded_pool_raises_no_false_alarm_over_many_cells_and_seeds():
    alarms, cells = _false_alarms(range(50))
    assert cells > 500 and alarms == 0


def test_the_winners_curse_is_allowed_for():
    # ten equally good LLMs: the router's pick in each cluster is the one whose estimate came out lowest, so
    # traffic shows it about 1.5 prediction SEs worse than predicted (mean z 1.4 without the allowance, 0.4 with it)
    z = []
    for seed in range(10):
        decisions, outcomes, counts = _simulate(seed, n_val=30, n_traffic=20_000, tied=True)
        table = online_evaluation(decisions, outcomes, counts).by_cluster
        assert table["count"].min() > 2000 and drift_alarms(table).height == 0
        z += table["z"].to_list()
    assert len(z) == 10 * N_CLUSTERS and np.mean(z) < 0.75


def test_without_validation_counts_the_default_is_conservative():
    alarms, cells = _false_alarms(range(10), counts=False)
    assert cells > 100 and alarms == 0


def test_a_binomial_se_that_ignores_the_prediction_noise_would_false_alarm():
    # the same deployments, the prediction treated as exact and no winner's-curse allowance: many alarms
    decisions, outcomes, counts = _simulate(0)
    exact = counts.with_columns(validation_count=pl.lit(1e12))
    table = online_evaluation(decisions, outcomes, exact, selection_margin=0.0).by_cluster
    assert drift_alarms(table).height >= 3


def test_a_degraded_llm_in_one_cluster_is_named_with_its_cluster():
    # error +0.25 for the LLM with the most traffic in a cluster: a few hundred rated requests in that cell
    detected = 0
    for seed in range(10):
        decisions, outcomes, counts = _simulate(seed, n_val=150, n_traffic=2400)
        before = online_evaluation(decisions, outcomes, counts)
        llm, cluster, count = before.by_cluster.sort("count", descending=True).row(0)[:3]
        assert 200 <= count <= 500
        decisions, outcomes, counts = _simulate(seed, n_val=150, n_traffic=2400, degrade=(int(llm[4:]), cluster, 0.25))
        table = online_evaluation(decisions, outcomes, counts)
        alarms = drift_alarms(table.by_cluster)
        assert alarms.select("llm", "cluster").rows() in ([], [(llm, cluster)])  # never another cell
        if alarms.height:
            detected += 1
            assert alarms["message"][0].startswith(f"{llm}, cluster {cluster}: observed error ")
            assert f"over {count} requests vs predicted" in alarms["message"][0]
        z_of_llm = [t.by_llm.filter(pl.col("llm") == llm)["z"][0] for t in (before, table)]
        assert z_of_llm[1] > z_of_llm[0] + 1  # the per-LLM table sees it too, diluted over its other clusters
    assert detected >= 8  # (39 of 40 seeds; 29 of 40 when the prediction rests on 50 validation prompts)


def test_numbers_of_one_cell():
    decisions = _decisions(["A"] * 4, [[1, 0]] * 4, [0.2] * 4)
    counts = pl.DataFrame({"llm": ["A", "A"], "cluster": [0, 1], "validation_count": [10.0, 40.0]})
    row = online_evaluation(decisions, _outcomes([1, 0, 0, 0]), counts).by_cluster.row(0, named=True)
    # pooled p0 = (4 * 0.25 + 10 * 0.2 + 1) / 16 = 0.25; prediction SE sqrt(p0 (1 - p0) / 10)
    assert (row["llm"], row["cluster"], row["count"]) == ("A", 0, 4)
    assert row["observed_error"] == pytest.approx(0.25) and row["difference"] == pytest.approx(0.05)
    assert row["validation_count"] == pytest.approx(10.0)
    assert row["se"] == pytest.approx(np.sqrt(0.1875 / 4 + 0.1875 / 10))
    assert row["allowance"] == pytest.approx(np.sqrt(0.01875))
    assert row["z"] == pytest.approx((0.05 - np.sqrt(0.01875)) / np.sqrt(0.065625))
    assert (row["observed_low"], row["observed_high"]) == pytest.approx((0.0456, 0.6994), abs=1e-4)  # Wilson, 95%


def test_soft_weights_count_the_validation_prompts_of_every_cluster_they_touch():
    decisions = _decisions(["A"], [[0.5, 0.5]], [0.3])
    counts = pl.DataFrame({"llm": ["A", "A"], "cluster": [0, 1], "validation_count": [10.0, 40.0]})
    row = online_evaluation(decisions, _outcomes([0]), counts).by_cluster.row(0, named=True)
    assert row["cluster"] == 0 and row["validation_count"] == pytest.approx(1 / (0.25 / 10 + 0.25 / 40))


def test_validation_counts_of_a_fitted_router_shape():
    assignments = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    errors = np.array([[0.0, 1.0], [1.0, np.nan], [0.0, 0.0]])
    table = validation_count_table(assignments, errors, ["A", "B"])
    expected = [("A", 0, 2.5**2 / 2.25), ("A", 1, 1.0), ("B", 0, 1.5**2 / 1.25), ("B", 1, 1.0)]
    assert table.rows() == [(m, k, pytest.approx(c)) for m, k, c in expected]


def test_a_fallback_answer_takes_its_prediction_from_the_json():
    decisions = _decisions(
        ["B"], [[1, 0]], [0.1], ranked=[["A", "B"]], predicted_json=[json.dumps({"A": 0.1, "B": 0.3})]
    )
    assert online_evaluation(decisions, _outcomes([0])).by_llm["predicted_error"].to_list() == [0.3]


def test_a_chosen_llm_without_a_prediction_is_named():
    decisions = _decisions(["ghost"], [[1, 0]], [0.1], ranked=[["A"]], predicted_json=[json.dumps({"A": 0.1})])
    with pytest.raises(RouterInputError, match=r"predicted_error='ghost'.*request_id='r0'"):
        online_evaluation(decisions, _outcomes([0]))
    unrated = online_evaluation(decisions, _outcomes([0]).with_columns(request_id=pl.lit("elsewhere")))
    assert unrated.by_llm.height == 0  # only the rated requests need a prediction


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d, o: (d, o.with_columns(score=pl.lit(1.5))), r"score=1\.5"),
        (lambda d, o: (d, pl.concat([o, o])), r"outcomes\.request_id='r0'"),
        (lambda d, o: (d.with_columns(router_version=pl.Series(["v1", "v2"])), o), r"router_version=\['v1', 'v2'\]"),
        (lambda d, o: (d.with_columns(cluster_weights=pl.Series([[1.0], [1.0, 0.0]])), o), r"cluster_weights=\[1, 2\]"),
    ],
    ids=["score", "duplicate-outcome", "two-versions", "two-k"],
)
def test_bad_input_is_named(change, match):
    decisions, outcomes = change(_decisions(["A", "A"], [[1, 0], [0, 1]], [0.2, 0.2]), _outcomes([0, 1]))
    with pytest.raises(RouterInputError, match=match):
        online_evaluation(decisions, outcomes)


def test_calibration_bins_predicted_error():
    decisions = _decisions(["A", "A", "B", "B"], [[1, 0]] * 4, [0.05, 0.05, 0.35, 1.0])
    table = calibration(decisions, _outcomes([0, 1, 1, 1]), bins=10)
    assert table.select("bin", "count", "predicted_error", "observed_error").rows() == [
        (0, 2, 0.05, 0.5),
        (3, 1, 0.35, 1.0),
        (9, 1, 1.0, 1.0),  # a prediction of exactly 1 falls in the last bin
    ]
    assert table["bin_low"].to_list()[:2] == pytest.approx([0.0, 0.3])
    assert table["observed_low"].to_list() == pytest.approx([0.0945, 0.2065, 0.2065], abs=1e-4)  # Wilson, 95%
    assert table["observed_high"].to_list() == pytest.approx([0.9055, 1.0, 1.0], abs=1e-4)


def test_quality_vs_cost_counts_every_answer_and_rates_the_rated():
    decisions = _decisions(["A", "A", "B", "C"], [[1, 0], [1, 0], [0, 1], None], [0.1] * 4, cost=[1, 3, 10, 5])
    outcomes = pl.DataFrame({"request_id": ["r0", "r2", "r3"], "score": [1.0, 0.0, 1.0]})
    table = quality_vs_cost(decisions, outcomes)
    assert table.select("llm", "requests", "mean_cost_usd", "rated", "observed_score").rows() == [
        ("A", 2, 2.0, 1, 1.0),
        ("B", 1, 10.0, 1, 0.0),
        ("C", 1, 5.0, 1, 1.0),  # a named-model request (no cluster weights) still has a quality and a cost
    ]


def test_validation_counts_of_a_fitted_uniroute_add_up_to_its_validation_prompts(two_topics):
    from router_core import KMeansClusterMap, UniRouter

    cmap = KMeansClusterMap(2, seed=0).fit(two_topics.train)
    ids = [f"validation-{i}" for i in range(len(two_topics.validation))]
    router = UniRouter(cmap).fit(two_topics.validation, ids, two_topics.outcomes("validation"), two_topics.llm_frame())
    table = validation_count_table(router.validation_assignments_, router.validation_errors_, router.llms_)
    assert table.height == 3 * 2
    by_llm = table.group_by("llm").agg(pl.col("validation_count").sum()).sort("llm")
    assert by_llm.rows() == [("A", 60.0), ("B", 60.0), ("C", 60.0)]  # a hard map: each prompt in one cluster
    sizes = np.bincount(router.validation_assignments_.argmax(axis=1), minlength=2).astype(float).tolist()
    assert table.filter(pl.col("llm") == "A")["validation_count"].to_list() == sizes
