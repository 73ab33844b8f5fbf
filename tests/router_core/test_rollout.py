"""Champion vs challenger on the same traffic (router_core.rollout): the comparison's numbers and intervals, and
each rule of rollout_decision (promote, roll back, hold on too few requests) on simulated decision records."""

from __future__ import annotations

import polars as pl
import pytest

from router_core import RouterInputError
from router_core.rollout import RolloutRules, rollout_comparison, rollout_decision, shadowed_requests
from tests.rollout_traffic import outcomes, traffic

RULES = RolloutRules(min_requests=200, min_rated=30)
NO_OUTCOMES = pl.DataFrame(schema={"request_id": pl.String, "score": pl.Float64})


def test_the_comparison_measures_each_side_with_intervals():
    decisions = traffic(1000, agree=0.8, failed=0.1)
    table = rollout_comparison(decisions, outcomes(decisions, 0.3), "1", "2")
    row = {(m, s): r for m, s, *_, r in zip(table["metric"], table["side"], table.iter_rows(named=True), strict=True)}
    agreement = row[("agreement", "both")]
    assert agreement["count"] == 1000 and agreement["low"] < 0.8 < agreement["high"] and agreement["high"] < 0.9
    difference = row[("predicted_error", "difference")]
    assert difference["low"] < -0.02 < difference["high"] < 0  # the challenger predicts ~0.02 less error
    assert row[("observed_error", "champion")]["low"] < 0.3 < row[("observed_error", "champion")]["high"]
    assert row[("observed_error", "challenger")]["count"] == 0  # the challenger served nothing (shadow only)
    upstream = row[("upstream_error_rate", "champion")]
    assert upstream["low"] < 0.1 < upstream["high"]
    assert abs(row[("cost_per_request", "champion")]["mean"] - 1e-3) < 1e-4


def test_promote_when_not_worse_with_confidence():
    decisions = traffic(400, error=0.30, shadow_error=0.25)
    made = rollout_decision(decisions, NO_OUTCOMES, "1", "2", None, RULES)
    assert made.action == "promote" and "400 shadowed requests" in made.reason and "predicted error" in made.reason
    worse = rollout_decision(traffic(400, error=0.30, shadow_error=0.40), NO_OUTCOMES, "1", "2", None, RULES)
    assert worse.action == "hold" and worse.reason.startswith("not shown not worse")
    dearer = rollout_decision(traffic(400, shadow_error=0.2, shadow_cost=2e-3), NO_OUTCOMES, "1", "2", None, RULES)
    assert dearer.action == "hold" and "predicted cost" in dearer.reason


def test_no_move_on_too_few_requests():
    better = traffic(150, error=0.30, shadow_error=0.10)  # clearly better, but under min_requests
    made = rollout_decision(better, NO_OUTCOMES, "1", "2", None, RULES)
    assert made.action == "hold" and made.reason.startswith("too few requests: 150 shadowed")
    failing = traffic(150, failed=0.5)  # a breach, but under min_requests
    assert rollout_decision(failing, NO_OUTCOMES, "1", None, "0", RULES).action == "hold"


def test_observed_outcomes_override_predictions_once_both_versions_have_enough():
    shadowed = traffic(400, error=0.30, shadow_error=0.20)  # the challenger predicts itself better
    canary = traffic(100, version="2", shadow=None, start=400, seed=3)
    decisions = pl.concat([shadowed, canary])
    rated = pl.concat([outcomes(shadowed, 0.2), outcomes(canary, 0.6, seed=4)])  # but it does worse when serving
    made = rollout_decision(decisions, rated, "1", "2", None, RULES)
    assert made.action == "hold" and "observed error" in made.reason and made.numbers["error_source"] == "observed"


@pytest.mark.parametrize(
    ("kwargs", "rules", "says"),
    [
        ({"failed": 0.2}, RULES, "upstream error rate"),
        ({"cost": 0.01}, RolloutRules(max_cost_per_request_usd=0.005), "cost per request"),
    ],
)
def test_rollback_on_a_guardrail_breach(kwargs, rules, says):
    decisions = traffic(300, shadow=None, **kwargs)
    made = rollout_decision(decisions, NO_OUTCOMES, "1", None, "0", rules)
    assert made.action == "rollback" and says in made.reason and made.reason.endswith("roll back to v0")
    assert rollout_decision(decisions, NO_OUTCOMES, "1", None, None, rules).action == "hold"  # nowhere to roll back to
    assert rollout_decision(traffic(300, shadow=None), NO_OUTCOMES, "1", None, "0", rules).action == "hold"  # healthy


def test_rollback_on_observed_error():
    decisions = traffic(300, shadow=None)
    made = rollout_decision(decisions, outcomes(decisions, 0.8), "1", None, "0", RULES)
    assert made.action == "rollback" and "observed error" in made.reason
    assert rollout_decision(decisions, outcomes(decisions, 0.3), "1", None, "0", RULES).action == "hold"


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_requests", 0), ("confidence", 1.0), ("error_tolerance", -0.1), ("max_cost_per_request_usd", float("nan"))],
)
def test_bad_rules_name_the_field(field, value):
    with pytest.raises(RouterInputError, match=field):
        RolloutRules(**{field: value})


def test_canary_requests_count_as_shadowed_the_other_way_round():
    champion_served = traffic(100, error=0.30, shadow_error=0.20)
    canary = traffic(50, version="2", shadow="1", error=0.20, shadow_error=0.30, start=100, seed=5)
    pairs = shadowed_requests(pl.concat([champion_served, canary]), "1", "2")
    assert pairs.height == 150
    tail = pairs.tail(50)  # the canary's: the challenger served (ranked), the champion shadowed
    assert tail["challenger_error"].mean() < 0.25 < tail["champion_error"].mean()
    assert tail["challenger_llm"].to_list() == ["a"] * 50
