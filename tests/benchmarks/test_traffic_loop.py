"""The traffic loop benchmark end to end on the fixture dataset: real replay endpoint and gateway, a short run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.request import urlopen

import numpy as np
import polars as pl
import pytest

from benchmarks import routing_quality, traffic_loop
from router_core import error_matrix


def test_benchmark_degrades_an_llm_judges_rates_and_keeps_every_record(mmlu_like_dir, tmp_path, capsys):
    out = tmp_path / "figures.json"
    argv = ["--data", str(mmlu_like_dir), "--full", "--clusters", "3", "--seeds", "0", "--before", "300"]
    argv += ["--after", "300", "--check-every", "150", "--window", "300", "--sample-rate", "0.2"]
    argv += ["--feedback-rate", "0.2", "--concurrency", "8", "--cache-dir", str(tmp_path / "cache")]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert traffic_loop.main(argv) == 0
    printed = capsys.readouterr().out
    assert "machine:" in printed and "| floor | measured | required | met |" in printed
    figures = json.loads(out.read_text())
    seed = figures["seeds"][0]
    change = figures["degradation"]
    assert change["llm"] != change["served_by"]
    assert seed["errors"] == 0 and seed["requests"] == 600
    assert seed["rated_feedback"] > 0 and seed["rated_judge"] > 0  # both sources reach the outcomes
    assert seed["decisions_on_disk"] == seed["decisions_expected"] == 600
    assert seed["feedback_on_disk"] == seed["feedback_posted"] > 0
    assert seed["samples_on_disk"] == seed["samples_expected"] > 0
    # the change is real (the champion loses AUDC on the degraded answers), seen and learned from: on the fixture an
    # LLM that was always right turns always wrong, which the loop must notice and route around
    assert seed["audc_truth_after"] > seed["audc_champion_after"]
    # the two-stage check: a suspect cell is asked again through the replay endpoint; an unchanged deterministic
    # endpoint never confirms, the changed one is confirmed naming the LLM and the cluster
    assert seed["false_alarms_before"] == 0 and seed["detected_after"] is not None
    assert seed["alarm"].startswith(f"{change['llm']} cluster ") and " worse " in seed["alarm"]
    assert seed["asked_after"] > 0 and seed["ungraded"] == 0
    alarmed = seed["alarm"].split(":")[0]  # "LLM cluster N"
    widened = {line.split(": ")[1] for line in seed["rechecks"] if f"{change['llm']} cluster " in line}
    assert len(widened - {alarmed}) >= 1  # --recheck-llm: the confirmed LLM's other cells were asked again too
    assert seed["traffic_only_false_alarms_before"] == 0  # the old figures are kept for comparison
    for variant in ("recovered", "recovered_b"):
        assert seed[variant] >= 0.8
    for before in ("audc_traffic_before", "audc_selective_before"):
        assert seed[before] >= seed["audc_champion_before"] - 0.001


def test_outcomes_take_feedback_over_the_judge_and_keep_the_traffic_order():
    decisions = pl.DataFrame(
        {"request_id": ["a", "b", "c", "d"], "chosen_llm": ["x", "y", "x", "y"], "index": [3, 0, 2, 1]}
    ).with_columns(cluster_weights=pl.lit([1.0, 0.0]))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    feedback = pl.DataFrame(
        {"request_id": ["a", "a", "b"], "score": [0.0, 1.0, 0.0], "at": [at, at + timedelta(seconds=1), at]}
    )
    judged = pl.DataFrame({"request_id": ["a", "c"], "judge_score": [0.0, 1.0]})
    outcomes = traffic_loop.outcome_frame(decisions, feedback, judged)
    assert outcomes.select("request_id", "score", "source", "index").rows() == [
        ("b", 0.0, "feedback", 0),
        ("c", 1.0, "judge", 2),
        ("a", 1.0, "feedback", 3),  # the latest rating stands, and wins over the judge's 0
    ]


def test_a_degradation_scores_the_substitute_answers_in_its_category_only(mmlu_like_dir):
    from benchmarks.mmlu_pro_data import load_mmlu_pro

    ds = load_mmlu_pro(mmlu_like_dir)
    models = ds.llms["model"].to_list()
    ids = ds.prompts["prompt_id"].to_list()
    scores = 1 - error_matrix(ds.outcomes, ids, models)
    data = routing_quality.Data(ds.prompts, models, None, scores, None, None)
    change = traffic_loop.Degradation("math-pro", "math", "history-pro")
    rows = np.arange(len(ids))
    after = change.scores(data, rows)
    math = (ds.prompts["category"] == "math").to_numpy()
    column = models.index("math-pro")
    assert scores[math, column].all() and not after[math, column].any()  # history-pro gets math wrong
    assert (np.delete(after, column, axis=1) == np.delete(scores, column, axis=1)).all()
    assert (after[~math, column] == scores[~math, column]).all()
    sent = traffic_loop.sent_prompts(mmlu_like_dir, ids[::-1][:5])
    assert sent["prompt_id"].to_list() == [str(i) for i in ids[::-1][:5]]
    assert sent["category"].to_list() == ds.prompts["category"].reverse().head(5).to_list()
    assert all(json.loads(m)[-1]["content"] == p for m, p in sent.select("messages", "prompt").iter_rows())


def test_a_results_only_dataset_is_replayed_with_answers_that_carry_its_scores(tmp_path):
    from profiling.graders import GradeItem, get_grader

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = [{"prompt_id": f"p{i}", "prompt": f"question {i}", "category": "c"} for i in range(3)]  # no reference
    (data_dir / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    prompts = pl.DataFrame({"prompt_id": ["p0", "p2"], "category": ["c", "c"]})  # p1: not in the routing data
    data = routing_quality.Data(prompts, ["a", "b"], None, np.array([[1.0, 0.0], [0.0, 1.0]]), None, None)
    replayed, extra = traffic_loop.replay_inputs(data_dir, data, tmp_path / "work")
    assert extra[0] == "--responses" and replayed.name == "prompts.jsonl"
    answers = pl.read_parquet(extra[1])
    sent = traffic_loop.sent_prompts(replayed, ["p2", "p0"])
    assert sent["prompt"].to_list() == ["question 2", "question 0"]
    grader = get_grader("exact_match")
    graded = {
        (m, p): grader.grade_items([GradeItem(r, traffic_loop.RIGHT, None)])[0].score
        for m, p, r in answers.select("model", "prompt_id", "response").iter_rows()
    }
    assert graded == {("a", "p0"): 1.0, ("a", "p2"): 0.0, ("b", "p0"): 0.0, ("b", "p2"): 1.0}
    graded_data = routing_quality.Data(prompts, ["a"], None, np.array([[0.5], [1.0]]), None, None)
    with pytest.raises(ValueError, match="scores must be 0 or 1"):
        traffic_loop.replay_inputs(data_dir, graded_data, tmp_path / "work")
    with pytest.raises(ValueError, match="no prompts file"):
        traffic_loop.replay_inputs(tmp_path / "work" / "replay" / "none", data, tmp_path / "work")


def test_an_answer_asked_again_is_graded_as_the_dataset_scores_the_llm_whose_recorded_answer_it_is():
    from benchmarks.traffic_recheck import AnswerGrader

    prompts = pl.DataFrame({"prompt_id": [1, 2], "category": ["c", "c"]})
    data = routing_quality.Data(prompts, ["a", "b"], None, np.array([[1.0, 0.0], [1.0, 0.0]]), None, None)
    recorded = pl.DataFrame(
        {"model": ["a", "b", "a", "b"], "prompt_id": [1, 1, 2, 2], "response": ["(A)", "(B)", "(C)", "(C)"]}
    )
    grader = AnswerGrader(recorded, data)
    assert grader.grade("a", "1", "(A)") == 1.0  # its own answer
    assert grader.grade("a", "1", "(B)") == 0.0  # b's answer served in its place (a substitution)
    assert grader.grade("b", "2", "(C)") == 0.0  # the same text as a's, scored as b's own first
    assert grader.grade("a", "1", "(Z)") is None


def test_the_replay_endpoint_is_put_in_the_state_of_each_check(mmlu_like_dir, tmp_path):
    from benchmarks.gateway import replay_process
    from benchmarks.traffic_recheck import post_json, replay_state

    rule = traffic_loop.Degradation("math-pro", "math", "history-pro").rule()
    with replay_process(tmp_path, mmlu_like_dir, "replay") as base_url:
        url = f"{base_url.removesuffix('/v1')}/_replay/substitutions"
        post_json(url, rule)  # in force after the run
        at_check = replay_state(url, rule, before=300)
        in_force = []
        for upto in (150, 300, 450, 150):
            at_check(upto)
            with urlopen(url) as response:
                in_force.append(len(json.loads(response.read())["substitutions"]))
    assert in_force == [0, 0, 1, 0]
