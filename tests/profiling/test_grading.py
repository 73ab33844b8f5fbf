from __future__ import annotations

import polars as pl

import warehouse as wh
from profiling.grading import grade_responses


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
