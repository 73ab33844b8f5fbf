"""The champion gate compares like with like: both versions' deferral curves on the same test prompts, over the
cost range both reach, with a tolerance; its one-line reason names the numbers, in $ per 1,000 queries."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from router_core import KMeansClusterMap, UniRouter, deferral_curve, traffic_error_stats
from serving import gate


def _curve(points):
    return pl.DataFrame(points, schema=["cost", "accuracy"], orient="row")


CHAMPION = _curve([(0.001, 0.5), (0.003, 0.7)])  # $1-$3 per 1,000 queries


def test_a_candidate_within_the_tolerance_is_promoted_and_a_worse_one_kept_with_the_numbers():
    # a cheaper LLM widens the candidate's range to $0.10: over its own range its AUDC would be lower
    better = _curve([(0.0001, 0.2), (0.001, 0.55), (0.003, 0.7)])
    promoted = gate.decide(better, (0.0001, 0.003), CHAMPION, (0.001, 0.003), "1")
    assert promoted.promote and promoted.cost_range == (0.001, 0.003) and promoted.worst_gap == pytest.approx(0)
    assert promoted.reason.startswith(
        f"promoted: AUDC {promoted.candidate_audc:.4f} vs champion v1's 0.6000 over $1.00-$3.00 per 1,000 queries, "
        "tolerance 0.002"
    )
    slightly = _curve([(0.001, 0.498), (0.003, 0.699)])  # 0.0015 below on average: within the tolerance
    assert gate.decide(slightly, (0.001, 0.003), CHAMPION, (0.001, 0.003), "1").promote
    worse = _curve([(0.001, 0.45), (0.003, 0.7)])
    kept = gate.decide(worse, (0.001, 0.003), CHAMPION, (0.001, 0.003), "4", tolerance=0.01)
    assert not kept.promote and kept.reason.startswith("kept as challenger: AUDC 0.5750 vs champion v4's 0.6000")
    assert "tolerance 0.01; at worst -0.0500 accuracy at $1.00" in kept.reason
    assert kept.numbers() == {
        "gate_champion": "v4",
        "gate_audc": 0.575,
        "gate_champion_audc": 0.6,
        "gate_range_usd_per_1k": "$1.00-$3.00",
        "gate_worst_gap": -0.05,
    }


def test_versions_that_share_one_budget_compare_the_accuracy_there():
    decision = gate.decide(_curve([(0.003, 0.75)]), (0.003, 0.004), CHAMPION, (0.001, 0.003), "2")
    assert decision.promote and decision.cost_range == (0.003, 0.003)
    assert "0.7500 vs champion v2's 0.7000 at $3.00 per 1,000 queries (the only budget both reach)" in decision.reason


def test_the_champion_routes_the_candidates_test_prompts_and_one_that_lost_an_llm_is_replaced(two_topics):
    data = two_topics
    cmap = KMeansClusterMap(n_clusters=2).fit(data.train)

    def fit(llms):
        costs = [dict(zip(data.llms, data.costs, strict=True))[m] for m in llms]
        return UniRouter(cmap).fit_arrays(data.validation, data.error_matrix("validation", llms), llms, costs)

    pool = ["A", "B", "C"]  # C (0.1) joins A and B (1.0 each)
    candidate = fit(pool)
    scores = 1 - data.error_matrix("test", pool)
    realised = np.broadcast_to(candidate.costs_, scores.shape)
    curve = deferral_curve(candidate.predict_error(data.test), candidate.costs_, scores, realised)
    args = (curve, (0.1, 1.0))
    decision = gate.judge(*args, fit(["A", "B"]), "1", pool, data.test, scores, realised)
    # the champion's LLMs all cost 1.0: the one budget both reach, where both route every topic right
    assert decision.promote and decision.cost_range == (1.0, 1.0)
    assert decision.candidate_audc == decision.champion_audc == 1.0
    assert gate.judge(*args, None, None, pool, data.test, scores, realised).reason == (
        "promoted: the first version (no champion yet)"
    )
    gone = gate.judge(*args, fit(["A", "B"]), "3", ["A", "C"], data.test, scores[:, [0, 2]], realised[:, [0, 2]])
    assert gone.promote and gone.reason == "promoted: champion v3 routes to LLMs no longer in the pool (B)"


@pytest.mark.parametrize(
    ("usd_per_query", "shown"),
    [(0.00012, "$0.12"), (0.0034, "$3.40"), (1.2345e-6, "$0.00123"), (5e-9, "$0.000005"), (12.3, "$12,300.00")],
)
def test_costs_read_as_plain_dollars_per_1000_queries(usd_per_query, shown):
    assert gate.usd_per_1k(usd_per_query) == shown


def test_without_a_comparison_only_the_champion_is_named():
    assert gate.no_champion().numbers() == {"gate_champion": "none"}
    assert gate.champion_gone("2", ["x"]).numbers() == {"gate_champion": "v2"}


def _traffic(llm: str, cluster_weights: list[float], errors: list[float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(errors))],
            "chosen_llm": llm,
            "cluster_weights": [cluster_weights] * len(errors),
            "score": [1 - e for e in errors],
        }
    )


def test_a_traffic_features_candidate_needs_both_test_prompts_and_heldout_traffic_not_worse(two_topics):
    data = two_topics
    cmap = KMeansClusterMap(n_clusters=2).fit(data.train)
    champion = UniRouter(cmap).fit_arrays(
        data.validation, data.error_matrix("validation", data.llms), data.llms, data.costs
    )
    # the candidate learned from traffic that C fails everything in cluster 0
    candidate = UniRouter(cmap).fit_arrays(
        data.validation, data.error_matrix("validation", data.llms), data.llms, data.costs
    )
    candidate.use_traffic(traffic_error_stats(_traffic("C", [1.0, 0.0], [1.0] * 40), data.llms, 2))
    on_test = gate.decide(CHAMPION, (0.001, 0.003), CHAMPION, (0.001, 0.003), "1")
    assert on_test.promote
    agrees, contradicts = _traffic("C", [1.0, 0.0], [1.0] * 10), _traffic("C", [1.0, 0.0], [0.0] * 10)

    promoted = gate.with_traffic(on_test, champion, candidate, agrees)
    assert promoted.promote and promoted.traffic.n == 10
    assert promoted.reason.startswith("promoted: on test prompts not worse (AUDC 0.6000 vs champion v1's 0.6000")
    assert "; on held-out traffic not worse (challenger is not worse on 10 held-out traffic outcomes: brier" in (
        promoted.reason
    )
    numbers = promoted.numbers()
    assert (
        numbers["gate_traffic_outcomes"] == 10 and numbers["gate_traffic_loss"] < numbers["gate_champion_traffic_loss"]
    )

    kept = gate.with_traffic(on_test, champion, candidate, contradicts)
    assert not kept.promote and kept.reason.startswith("kept as challenger: on test prompts not worse (")
    assert "on held-out traffic worse (challenger is worse on 10 " in kept.reason and "tolerance 0)" in kept.reason
    assert gate.with_traffic(on_test, champion, candidate, contradicts, tolerance=1.0).promote

    worse_on_test = gate.decide(_curve([(0.001, 0.45), (0.003, 0.7)]), (0.001, 0.003), CHAMPION, (0.001, 0.003), "1")
    both = gate.with_traffic(worse_on_test, champion, candidate, agrees)
    assert not both.promote and both.reason.startswith("kept as challenger: on test prompts worse (AUDC 0.5750")
    nothing = gate.with_traffic(on_test, champion, candidate, agrees.clear())
    assert not nothing.promote and "on held-out traffic not checked (no held-out traffic outcomes" in nothing.reason
    assert gate.with_traffic(gate.no_champion(), None, candidate, agrees) == gate.no_champion()
    other_map = gate.with_traffic(on_test, champion, candidate, agrees, same_clusters=False)
    assert not other_map.promote and other_map.traffic is None
    assert other_map.reason.endswith(
        "; on held-out traffic not checked (champion v1 routes with another cluster map or embedder)"
    )
