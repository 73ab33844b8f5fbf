"""Importers write prompts and existing results into a real DuckDB file, idempotently."""

from __future__ import annotations

import polars as pl
import pytest

import warehouse as wh
from profiling.importers import import_graded_results, import_mmlu_pro
from router_core import RouterInputError


@pytest.fixture
def con(tmp_path):
    with wh.connect(tmp_path / "w.duckdb") as con:
        yield con


def test_mmlu_pro_prompts_are_rendered_split_and_idempotent(con, mmlu_like_dir):
    first = import_mmlu_pro(con, mmlu_like_dir, seed=1)
    import_mmlu_pro(con, mmlu_like_dir, seed=1)
    stored = wh.read_prompts(con, dataset="mmlu_pro")
    assert stored.height == first.height == 120
    counts = stored.group_by("category", "split").len().pivot("split", index="category", values="len")
    assert counts["train"].to_list() == [24] * 3 and counts["validation"].to_list() == [4] * 3
    row = stored.row(0, named=True)
    assert row["prompt"].startswith("The following are multiple choice questions") and "A. 1" in row["prompt"]
    assert row["text"].endswith("(D) 4") and row["reference"] == "A" and row["grader"] == "mmlu_pro_letter"


def test_mmlu_pro_subset_by_question_ids(con, mmlu_like_dir):
    assert import_mmlu_pro(con, mmlu_like_dir, question_ids=[1, 2, 3]).height == 3


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_graded_results_become_prompts_and_grades(con, tmp_path, suffix):
    results = pl.DataFrame(
        {
            "prompt_id": [1, 1, 2],
            "prompt": ["2+2?", "2+2?", "capital of France?"],
            "model": ["a", "b", "a"],
            "score": [1.0, 0.0, 0.5],
        }
    )
    path = tmp_path / f"results.{suffix}"
    {"csv": results.write_csv, "jsonl": results.write_ndjson, "parquet": results.write_parquet}[suffix](path)
    assert import_graded_results(con, path, dataset="harness") == 3
    assert import_graded_results(con, path, dataset="harness") == 3  # upsert, no duplicates
    assert wh.read_grades(con).height == 3
    assert sorted(wh.read_prompts(con, dataset="harness")["prompt_id"]) == ["harness/1", "harness/2"]


def test_bad_score_writes_nothing(con, tmp_path):
    path = tmp_path / "bad.csv"
    pl.DataFrame({"prompt_id": [1, 2], "prompt": ["x", "y"], "model": "a", "score": [1.0, 7.0]}).write_csv(path)
    with pytest.raises(RouterInputError, match=r"score=7\.0"):
        import_graded_results(con, path, dataset="harness")
    assert wh.read_prompts(con).height == 0 and wh.read_grades(con).height == 0


def test_unsupported_format_is_named(con, tmp_path):
    with pytest.raises(ValueError, match="unsupported format"):
        import_graded_results(con, tmp_path / "results.xlsx", dataset="x")
