"""Sampled requests as validation prompts of the ``traffic`` dataset, in a real DuckDB file: sent as the client sent
them, embedded as the router embedded them, each added once, and graded by the judge with a reference-free
rubric through the ordinary grading path."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

import warehouse as wh
from profiling.grading import grade_responses_report
from profiling.traffic_prompts import add_traffic_prompts, added_request_ids

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
IMAGE = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}]}]  # not plain text turns


def _samples(*rows: tuple[str, str, list]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_id": [r[0] for r in rows],
            "prompt": [r[1] for r in rows],
            "messages": [json.dumps(r[2]) for r in rows],
        }
    )


@dataclass
class Completion:
    response: str
    cost_usd: float | None
    model_id: str


class Judge:
    """Answers every verdict request with 8/10 and keeps what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, judge: str, requests: list[dict]) -> list[Completion]:
        self.asked += [r["messages"][0]["content"] for r in requests]
        return [Completion("Fine answer.\nScore: 8", 0.001, "judge-v1") for _ in requests]


def test_requests_become_validation_prompts_once_sent_as_the_client_sent_them(tmp_path):
    with wh.connect(tmp_path / "w.duckdb") as con:
        first = add_traffic_prompts(con, _samples(("r1", "Capital of France?", CHAT)), "judge-llm")
        both = _samples(("r1", "Capital of France?", CHAT), ("r2", "What is this?", IMAGE))
        second = add_traffic_prompts(con, both, "judge-llm")
        stored = wh.read_prompts(con, dataset="traffic")
        assert added_request_ids(con) == ["r1", "r2"]
    assert first["prompt_id"].to_list() == ["traffic/r1"] and second["prompt_id"].to_list() == ["traffic/r2"]
    rows = {r["prompt_id"]: r for r in stored.to_dicts()}
    assert {r["split"] for r in rows.values()} == {"validation"}
    assert json.loads(rows["traffic/r1"]["messages"]) == CHAT  # the system turn too
    assert json.loads(rows["traffic/r2"]["messages"]) == [{"role": "user", "content": "What is this?"}]
    assert rows["traffic/r1"]["text"] == "Capital of France?"  # what the router embedded


def test_the_judge_grades_their_answers_without_a_reference(tmp_path):
    judge = Judge()
    with wh.connect(tmp_path / "w.duckdb") as con:
        add_traffic_prompts(con, _samples(("r1", "Capital of France?", CHAT)), "judge-llm")
        answer = {"model": "m", "prompt_id": "traffic/r1", "response": "Paris.", "prompt_hash": "h", "run_id": "r"}
        wh.insert_responses(con, pl.DataFrame([answer]))
        report = grade_responses_report(con, complete=judge)
        grades = wh.read_grades(con)
    assert (report.written, report.failed) == (1, 0)
    assert grades.select("prompt_id", "score", "grader").row(0) == ("traffic/r1", 0.8, "llm_judge")
    [asked] = judge.asked
    assert "Capital of France?" in asked and "Paris." in asked
    assert "no reference answer" in asked and "Reference answer" not in asked and "(none)" not in asked
