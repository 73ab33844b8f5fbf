"""traffic_outcomes by real Dagster materialisations on a real DuckDB file, its judge served over HTTP by the replay
endpoint: feedback wins over the judge (both kept), the judge's USD/day cap is never passed (across runs of the day),
its verdict cache pays nothing twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pytest

import warehouse as wh
from assets.outcomes import traffic_outcomes
from assets.resources import CollectorResource, WarehouseResource
from pipelines.definitions import defs
from profiling.graders import GradeItem, get_grader
from profiling.traffic_judging import TRAFFIC_RUBRIC, _request_text, worst_case_usd
from replay import ReplayData, ReplayServer

NOW = datetime.now(UTC).replace(microsecond=0)
JUDGE = "judge"
#: request id -> (the user's question, the answer given, the judge's verdict)
TRAFFIC = {
    f"r{i}": (
        f"What is {i} plus {i}?",
        f"It is {2 * i}." if i % 2 == 0 else "No idea.",
        "Score: 10" if i % 2 == 0 else "Score: 0",
    )
    for i in range(6)
}


def _messages(question: str) -> str:
    return json.dumps([{"role": "user", "content": question}])


def _judge_prompt(question: str, answer: str) -> str:
    grader = get_grader("llm_judge", {"judge": JUDGE, "rubric": TRAFFIC_RUBRIC})
    return grader.render(GradeItem(answer, None, _request_text(_messages(question), question)))


@pytest.fixture(scope="module")
def judge_server():
    """The replay endpoint serving the judge: its recorded verdict on each request's rubric prompt."""
    prompts = pl.DataFrame(
        {"prompt_id": list(TRAFFIC), "prompt": [_judge_prompt(q, a) for q, a, _ in TRAFFIC.values()]}
    )
    verdicts = pl.DataFrame(
        {"model": JUDGE, "prompt_id": list(TRAFFIC), "response": [f"Looks {v}.\n{v}" for *_, v in TRAFFIC.values()]}
    )
    with ReplayServer(ReplayData.from_frames(prompts, verdicts)) as server:
        yield server


@pytest.fixture
def home(tmp_path, judge_server):
    """A warehouse holding a catalog with the judge (1 USD per million tokens), the decisions of the traffic and its
    stored sample; the judge's request log cleared."""
    catalog = tmp_path / "llms.yaml"
    url = judge_server.base_url
    catalog.write_text(
        f"defaults: {{base_url: '{url}', usd_per_mtok_in: 1, usd_per_mtok_out: 1}}\n"
        f"llms: [{{name: {JUDGE}}}, {{name: cheap}}]\n"
    )
    path = tmp_path / "w.duckdb"
    wh.sync_catalog(lambda: wh.connect(path), catalog)
    with wh.connect(path) as con:
        _add_traffic(con, list(TRAFFIC))
    judge_server.request_log.reset()
    return path


def _add_traffic(con, request_ids: list[str], same_as: str | None = None) -> None:
    """Decisions and stored samples of ``request_ids`` (their text that of ``same_as`` when given)."""
    decisions = pl.DataFrame(
        {
            "request_id": request_ids,
            "at": NOW,
            "router_version": "1",
            "chosen_llm": "cheap",
            "status": 200,
            "budget_kind": "none",
            "embedder_id": "e",
            "cluster_weights": [[1.0, 0.0]] * len(request_ids),
        },
        schema_overrides={"status": pl.Int32},
    )
    wh.insert_routing_decisions(con, decisions)
    text = [TRAFFIC[same_as or rid] for rid in request_ids]
    samples = decisions.select("request_id", "at", "router_version", "chosen_llm", "embedder_id", "cluster_weights")
    samples = samples.with_columns(
        prompt=pl.Series([q for q, _, _ in text]),
        messages=pl.Series([_messages(q) for q, _, _ in text]),
        answer=pl.Series([a for _, a, _ in text]),
    )
    wh.insert_traffic_samples(con, samples)


def _materialise(instance, path, tmp_path, **config) -> dict:
    resources = {
        "warehouse": WarehouseResource(path=str(path)),
        "collector": CollectorResource(pacing_path=str(tmp_path / "pacing.sqlite"), timeout_s=10.0),
    }
    result = dg.materialize(
        [traffic_outcomes],
        resources=resources,
        instance=instance,
        run_config={"ops": {"traffic_outcomes": {"config": config}}},
    )
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("traffic_outcomes")[0].metadata.items()}


def _judge_calls(server) -> int:
    return sum(r["count"] for r in server.request_log.rows() if r["model"] == JUDGE)


def _worst(request_id: str) -> float:
    question, answer, _ = TRAFFIC[request_id]
    return worst_case_usd({"usd_per_mtok_in": 1.0, "usd_per_mtok_out": 1.0}, _judge_prompt(question, answer), 512)


def test_the_assets_are_in_the_definitions():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"traffic_outcomes", "online_evaluation"} <= keys


def test_feedback_wins_over_the_judge_and_both_are_kept(instance, home, tmp_path, judge_server):
    with wh.connect(home) as con:
        feedback = {"feedback_id": ["f0", "f1"], "request_id": ["r0", "r1"], "score": [0.0, 1.0], "at": NOW}
        wh.insert_traffic_feedback(con, pl.DataFrame(feedback).with_columns(source=pl.lit("api")))
    meta = _materialise(instance, home, tmp_path, judge=JUDGE, judge_usd_per_day=1.0)
    assert meta["judge_calls"] == 6 == _judge_calls(judge_server) and meta["judge_verdicts_stored"] == 6
    assert (meta["dagster/row_count"], meta["rated_by_feedback"], meta["rated_by_judge_only"]) == (6, 2, 4)
    assert meta["rated_by_both"] == 2 and meta["judge_feedback_mean_abs_gap"] == 1.0  # the judge disagreed twice
    with wh.connect(home) as con:
        outcomes = wh.read_traffic_outcomes(con)
        judged = wh.read_traffic_judgements(con)
    rows = {r["request_id"]: r for r in outcomes.iter_rows(named=True)}
    assert (rows["r0"]["score"], rows["r0"]["source"], rows["r0"]["judge_score"]) == (0.0, "feedback", 1.0)
    assert (rows["r1"]["score"], rows["r1"]["source"], rows["r1"]["judge_score"]) == (1.0, "feedback", 0.0)
    assert (rows["r2"]["score"], rows["r2"]["source"], rows["r3"]["score"]) == (1.0, "judge", 0.0)
    assert set(outcomes.columns) >= {"decided_at", "router_version", "embedder_id", "chosen_llm", "cluster_weights"}
    assert rows["r2"]["cluster_weights"] == [1.0, 0.0] and rows["r2"]["router_version"] == "1"
    assert sorted(judged["request_id"]) == sorted(TRAFFIC)  # the judge's verdicts kept, feedback or not
    assert set(judged["judged_by"]) == {f"{JUDGE}@{JUDGE}"}


def test_without_a_judge_outcomes_come_from_feedback_only(instance, home, tmp_path, judge_server):
    with wh.connect(home) as con:
        feedback = {"feedback_id": ["f0"], "request_id": ["r4"], "score": [0.5], "at": NOW, "source": "api"}
        wh.insert_traffic_feedback(con, pl.DataFrame(feedback))
    meta = _materialise(instance, home, tmp_path)
    assert (meta["dagster/row_count"], meta["rated_by_feedback"], _judge_calls(judge_server)) == (1, 1, 0)
    assert meta["judge"] == "none (judge not configured)"


def test_the_judge_stops_before_the_next_call_could_pass_the_cap(instance, home, tmp_path, judge_server):
    ids = sorted(TRAFFIC)  # samples are judged oldest first, then by request id
    cap = _worst(ids[0]) + _worst(ids[1]) + 0.5 * _worst(ids[2])  # room for two worst cases, not three
    meta = _materialise(instance, home, tmp_path, judge=JUDGE, judge_usd_per_day=cap)
    assert _judge_calls(judge_server) == 2 == meta["judge_calls"]
    assert (meta["judge_verdicts_stored"], meta["judge_stopped_by_cap"]) == (2, 4)
    with wh.connect(home) as con:
        spend = wh.read_judge_spend(con)
        assert wh.judge_spend_on(con) == pytest.approx(meta["judge_spent_today_usd"])
        assert meta["judge_spent_today_usd"] <= cap
    assert spend.height == 2 and set(spend["status"]) == {"paid"} and set(spend["judge"]) == {JUDGE}
    assert (spend["cost_usd"] > 0).all() and (spend["cost_usd"] <= spend["reserved_usd"]).all()
    assert meta["judge_spent_this_run_usd"] == pytest.approx(spend["cost_usd"].sum())

    # the next run of the day counts what this one spent: only calls whose worst case fits the rest are made
    again = _materialise(instance, home, tmp_path, judge=JUDGE, judge_usd_per_day=cap)
    left = cap - spend["cost_usd"].sum()
    fits = 0
    for rid in ids[2:]:
        if _worst(rid) > left:
            break
        left, fits = left - _worst(rid), fits + 1
    assert 0 < fits < 4 and again["judge_calls"] == fits and _judge_calls(judge_server) == 2 + fits
    with wh.connect(home) as con:
        assert wh.judge_spend_on(con) <= cap


def test_spend_recorded_earlier_in_the_day_counts_against_the_cap(instance, home, tmp_path, judge_server):
    cap = 2.5 * _worst("r0")  # room for two calls on a fresh day
    with wh.connect(home) as con:  # another run's call earlier today, settled: room for one call is left
        calls = pl.DataFrame({"request_id": ["elsewhere"], "reserved_usd": [cap - 1.2 * _worst("r0")]})
        (spend_id,) = wh.reserve_judge_spend(con, JUDGE, calls, cap)["spend_id"]
        wh.settle_judge_spend(
            con, pl.DataFrame({"spend_id": [spend_id], "cost_usd": [calls["reserved_usd"][0]], "status": ["paid"]})
        )
    meta = _materialise(instance, home, tmp_path, judge=JUDGE, judge_usd_per_day=cap)
    assert _judge_calls(judge_server) == 1 == meta["judge_calls"] and meta["judge_stopped_by_cap"] == 5
    assert meta["judge_spent_today_usd"] <= cap


def test_a_verdict_in_the_judge_cache_is_not_paid_again(instance, home, tmp_path, judge_server):
    first = _materialise(instance, home, tmp_path, judge=JUDGE, judge_usd_per_day=1.0)
    assert first["judge_calls"] == 6 == _judge_calls(judge_server)
    again = _materialise(instance, home, tmp_path, judge=JUDGE, judge_usd_per_day=1.0)
    assert (again["judge_calls"], again["judge_candidates"], _judge_calls(judge_server)) == (0, 0, 6)
    with wh.connect(home) as con:  # a new request asking the same and answered the same: its verdict is cached
        _add_traffic(con, ["r9"], same_as="r2")
        spent = wh.judge_spend_on(con)
    cached = _materialise(instance, home, tmp_path, judge=JUDGE, judge_usd_per_day=1.0)
    assert (cached["judge_calls"], cached["judge_cached_verdicts"], cached["judge_verdicts_stored"]) == (0, 1, 1)
    assert cached["judge_spent_this_run_usd"] == 0.0 and _judge_calls(judge_server) == 6
    with wh.connect(home) as con:
        assert wh.judge_spend_on(con) == spent
        verdict = wh.read_traffic_judgements(con, "r9").row(0, named=True)
        outcome = wh.read_traffic_outcomes(con).filter(pl.col("request_id") == "r9").row(0, named=True)
    assert (verdict["score"], verdict["cached"], verdict["cost_usd"]) == (1.0, True, 0.0)
    assert (outcome["score"], outcome["source"]) == (1.0, "judge")


def test_a_judge_not_in_the_catalog_fails_the_run_naming_it(instance, home, tmp_path):
    result = dg.materialize(
        [traffic_outcomes],
        resources={"warehouse": WarehouseResource(path=str(home)), "collector": CollectorResource()},
        instance=instance,
        run_config={"ops": {"traffic_outcomes": {"config": {"judge": "nobody"}}}},
        raise_on_error=False,
    )
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "traffic_outcomes.config: judge='nobody': not in the catalog" in message


def test_a_failed_judge_call_counts_at_its_worst_case_and_is_tried_again(instance, home, tmp_path, judge_server):
    with wh.connect(home) as con:  # its verdict is not recorded: the judge endpoint answers 404
        _add_traffic(con, ["unknown"], same_as="r0")
        con.execute("UPDATE traffic_samples SET answer = 'Something else.' WHERE request_id = 'unknown'")
    meta = _materialise(instance, home, tmp_path, judge=JUDGE, judge_max_per_run=7)
    assert (meta["judge_calls"], meta["judge_verdicts_stored"], meta["judge_failed"]) == (7, 6, 1)
    with wh.connect(home) as con:
        failed = wh.read_judge_spend(con).filter(pl.col("request_id") == "unknown").row(0, named=True)
        assert (failed["status"], failed["cost_usd"]) == ("failed", failed["reserved_usd"])
        assert wh.read_traffic_judgements(con, "unknown").height == 0
    again = _materialise(instance, home, tmp_path, judge=JUDGE)
    assert (again["judge_candidates"], again["judge_calls"], again["judge_failed"]) == (1, 1, 1)


def test_the_sample_rate_and_the_maximum_per_run_bound_the_calls(instance, home, tmp_path, judge_server):
    none = _materialise(instance, home, tmp_path, judge=JUDGE, judge_sample_rate=0.0)
    assert (none["judge_candidates"], none["judge_selected"], _judge_calls(judge_server)) == (6, 0, 0)
    two = _materialise(instance, home, tmp_path, judge=JUDGE, judge_max_per_run=2)
    assert (two["judge_selected"], two["judge_calls"], _judge_calls(judge_server)) == (2, 2, 2)
    half = _materialise(instance, home, tmp_path, judge=JUDGE, judge_sample_rate=0.5)
    assert 0 < half["judge_selected"] < 4 and half["judge_calls"] == half["judge_selected"]  # a hash picks them
    again = _materialise(instance, home, tmp_path, judge=JUDGE, judge_sample_rate=0.5)
    assert again["judge_selected"] == 0  # the same ones: judged already
