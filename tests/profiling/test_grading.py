"""grade_responses: a grader per (grader, options) group, versions that regrade, judges paid once, failures kept out."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import polars as pl

import warehouse as wh
from profiling.grading import GradingReport, grade_responses, grade_responses_report


def test_grades_each_response_once_with_its_prompts_grader(tmp_path):
    prompts = pl.DataFrame(
        {
            "prompt_id": ["p1", "p2", "p3"],
            "dataset": "d",
            "split": "validation",
            "text": ["a", "b", "c"],
            "prompt": ["A?", "B?", "C?"],
            "reference": ["A", "B", "42"],
            "grader": ["mmlu_pro_letter", "mmlu_pro_letter", "numeric"],
            "content_hash": ["1", "2", "3"],
        }
    )
    responses = pl.DataFrame(
        {
            "model": "m",
            "prompt_id": ["p1", "p2", "p3"],
            "response": ["so the answer is (A)", "the answer is (C)", "That makes 42."],
            "prompt_hash": "h",
            "run_id": "r",
        }
    )
    with wh.connect(tmp_path / "w.duckdb") as con:
        wh.upsert_prompts(con, prompts)
        wh.insert_responses(con, responses)
        assert grade_responses(con) == 3
        assert grade_responses(con) == 0
        grades = wh.read_grades(con)
    assert dict(zip(grades["prompt_id"], grades["score"], strict=True)) == {"p1": 1.0, "p2": 0.0, "p3": 1.0}
    assert set(grades["grader"]) == {"mmlu_pro_letter", "numeric"}


# (prompt_id, grader, grader_options, reference, tests, prompt, response)
ROWS = [
    ("n1", "numeric", None, "100", None, "How many?", "About 104."),
    ("n2", "numeric", json.dumps({"rel_tol": 0.05}), "100", None, "How many?", "About 104."),
    (
        "c1",
        "code",
        json.dumps({"timeout_s": 5}),
        None,
        "assert add(2, 2) == 4",
        "Write add.",
        "def add(a, b): return a + b",
    ),
    (
        "c2",
        "code",
        json.dumps({"timeout_s": 5}),
        None,
        "assert add(2, 2) == 4",
        "Write add.",
        "def add(a, b): return a * 3",
    ),
    ("j1", "llm_judge", json.dumps({"judge": "judge-llm"}), "Paris", None, "Capital of France?", "Paris"),
    ("j2", "llm_judge", json.dumps({"judge": "judge-llm"}), "Paris", None, "Capital of France?", "Lyon"),
    ("j3", "llm_judge", json.dumps({"judge": "judge-llm"}), "Paris", None, "Capital of France?", "no idea"),
]


def store(con, rows=ROWS) -> None:
    wh.upsert_prompts(
        con,
        pl.DataFrame(
            {
                "prompt_id": [r[0] for r in rows],
                "dataset": "d",
                "split": "validation",
                "text": [r[5] for r in rows],
                "prompt": [r[5] for r in rows],
                "grader": [r[1] for r in rows],
                "grader_options": [r[2] for r in rows],
                "reference": [r[3] for r in rows],
                "tests": [r[4] for r in rows],
                "content_hash": [r[0] for r in rows],
            }
        ),
    )
    wh.insert_responses(
        con,
        pl.DataFrame(
            {"model": "m", "prompt_id": [r[0] for r in rows], "response": [r[6] for r in rows], "prompt_hash": "h"}
        ).with_columns(run_id=pl.lit("r")),
    )


@dataclass
class FakeCompletion:
    response: str
    cost_usd: float | None
    model_id: str


class FakeJudge:
    """Scores "Paris" 9/10 and "Lyon" 1/10; any other answer gets a verdict without a score (until ``fixed``)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.fixed = False

    def __call__(self, judge: str, requests: list[dict]) -> list[FakeCompletion | None]:
        out = []
        for request in requests:
            content = request["messages"][0]["content"]
            answer = content.split("Answer to grade:\n")[1].split("\n")[0]
            self.asked.append(answer)
            verdict = {"Paris": "Score: 9", "Lyon": "Score: 1"}.get(answer, "Score: 0" if self.fixed else "unsure")
            out.append(FakeCompletion(verdict, 0.002, "judge-model-v1"))
        return out


def scores(con) -> dict[str, float]:
    grades = wh.read_grades(con)
    return dict(zip(grades["prompt_id"], grades["score"], strict=True))


def test_options_code_and_judge_grades_with_failures_left_ungraded(tmp_path):
    judge = FakeJudge()
    with wh.connect(tmp_path / "w.duckdb") as con:
        store(con)
        report = grade_responses_report(con, complete=judge)
        assert isinstance(report, GradingReport)
        assert (report.written, report.failed) == (6, 1)
        assert abs(report.judge_cost_usd - 3 * 0.002) < 1e-12  # the failed verdict was paid for too
        (reason,) = report.failures
        assert reason.startswith("llm_judge: verdict has no score matching") and reason.endswith(": 'unsure'")
        assert report.examples[0].startswith("m/j3: llm_judge: verdict has no score")
        assert scores(con) == {"n1": 0.0, "n2": 1.0, "c1": 1.0, "c2": 0.0, "j1": 0.9, "j2": 0.1}
        grades = wh.read_grades(con).sort("prompt_id")
        versions = dict(zip(grades["prompt_id"], grades["grader_version"], strict=True))
        assert versions["n1"] == "1" and versions["n2"] == "1+rel_tol=0.05" and versions["c1"] == "1+timeout_s=5.0"
        assert versions["j1"] == "1+judge='judge-llm'"
        judged = grades.filter(pl.col("grader") == "llm_judge")
        assert judged["judge"].to_list() == ["judge-llm@judge-model-v1"] * 2
        assert judged["judge_cost_usd"].to_list() == [0.002, 0.002]
        assert grades.filter(pl.col("grader") != "llm_judge")["judge"].null_count() == 4

        # The next run retries only the failed item; the judge is asked nothing it already answered.
        judge.fixed = True
        again = grade_responses_report(con, complete=judge)
        assert (again.written, again.failed, again.judge_cost_usd) == (1, 0, 0.002)
        assert judge.asked == ["Paris", "Lyon", "no idea", "no idea"]
        assert scores(con)["j3"] == 0.0
        assert grade_responses_report(con, complete=judge) == GradingReport()


def test_verdicts_are_cached_in_the_warehouse_so_regrading_never_pays_twice(tmp_path):
    judge = FakeJudge()
    judged = [r for r in ROWS if r[1] == "llm_judge"][:2]
    with wh.connect(tmp_path / "w.duckdb") as con:
        store(con, judged)
        assert grade_responses(con, complete=judge) == 2
        con.execute("DELETE FROM grades")  # e.g. grades archived, or lost
        report = grade_responses_report(con, complete=judge)
        assert (report.written, report.judge_cost_usd) == (2, 0.0)
        assert judge.asked == ["Paris", "Lyon"]
        assert con.execute("SELECT count(*), min(judge) FROM judge_cache").fetchall() == [
            (2, "judge-llm@judge-model-v1")
        ]
        assert wh.read_grades(con)["judge_cost_usd"].to_list() == [0.002, 0.002]  # what each verdict cost


def test_changed_options_regrade_and_unchanged_ones_do_not(tmp_path):
    numeric = [r for r in ROWS if r[0] in ("n1", "n2")]
    with wh.connect(tmp_path / "w.duckdb") as con:
        store(con, numeric)
        assert grade_responses(con) == 2
        assert grade_responses(con) == 0
        store(con, [("n1", "numeric", json.dumps({"abs_tol": 5}), *ROWS[0][3:])])
        assert grade_responses(con) == 1
        assert scores(con) == {"n1": 1.0, "n2": 1.0}


def test_without_complete_or_with_bad_options_those_rows_fail_and_the_rest_is_graded(tmp_path):
    rows = [
        *ROWS,
        ("b1", "numeric", "{not json", "1", None, "?", "1"),
        ("b2", "numeric", '{"tol": 1}', "1", None, "?", "1"),
    ]
    with wh.connect(tmp_path / "w.duckdb") as con:
        store(con, rows)
        report = grade_responses_report(con)
        assert (report.written, report.failed) == (4, 5)
        assert report.failures["llm_judge: no complete function given to call the judge"] == 3
        reasons = " | ".join(report.failures)
        assert "numeric: grader_options='{not json'" in reasons
        assert "options.tol: unknown option of grader 'numeric'" in reasons
        assert set(scores(con)) == {"n1", "n2", "c1", "c2"}


def _writes_meanwhile(path) -> bool:
    """Whether another process gets the warehouse for writing within 0.5 s (DuckDB: one writing process)."""
    probe = "import sys, warehouse as wh; wh.connect(sys.argv[1], lock_wait_s=0.5).close()"
    return subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True).returncode == 0


def test_grading_through_a_connect_function_leaves_the_warehouse_free_while_the_judge_answers(tmp_path):
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        store(con)
    judge, free = FakeJudge(), []

    def slow_judge(name: str, requests: list[dict]) -> list[FakeCompletion | None]:
        free.append(_writes_meanwhile(path))  # a profiling run's merge, say, while this judge thinks
        return judge(name, requests)

    report = grade_responses_report(lambda: wh.connect(path), complete=slow_judge)
    assert free == [True] and (report.written, report.failed) == (6, 1)
    with wh.connect(path) as con:
        assert scores(con)["j1"] == 0.9 and con.execute("SELECT count(*) FROM judge_cache").fetchall() == [(2,)]

    # given a connection, grading holds it throughout (one process's own tools, e.g. ``uniroute grade``)
    with wh.connect(path) as con:
        con.execute("DELETE FROM grades")
        con.execute("DELETE FROM judge_cache")
        free.clear()
        assert grade_responses_report(con, complete=slow_judge).written == 6
    assert free == [False]
