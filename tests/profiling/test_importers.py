"""Importers write prompts and existing results into a real DuckDB file, idempotently."""

from __future__ import annotations

import polars as pl
import pytest

import warehouse as wh
from profiling.importers import import_mmlu_pro, import_results


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


CATALOG = (
    "defaults: {base_url: 'http://127.0.0.1:9/v1'}\nllms:\n  - {name: a, usd_per_mtok_in: 1, usd_per_mtok_out: 1}\n"
)


def _long(n: int = 6) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": ["a"] * n + ["b"] * n,
            "prompt_id": [f"q{i}" for i in range(n)] * 2,
            "prompt": [f"Question {i}?" for i in range(n)] * 2,
            "score": [1.0, 0.0] * n,
            "cost_usd": [0.001 * (i + 1) for i in range(2 * n)],
            "category": ["x", "y"] * n,
        }
    )


def test_results_become_imported_answers_of_import_only_llms_and_reimport_adds_nothing(con, tmp_path):
    catalog = tmp_path / "llms.yaml"
    catalog.write_text(CATALOG)
    wh.sync_catalog(con, catalog)
    path = tmp_path / "results.parquet"
    _long().write_parquet(path)
    report = import_results(con, path, "harness", catalog=catalog)
    assert (report.answers_stored, report.grades_written, report.prompts_added) == (12, 12, 6)
    assert report.models_added_to_catalog == ["b"] and report.with_cost == 12
    llms = {r["name"]: r for r in wh.read_llms(con).iter_rows(named=True)}
    assert llms["b"]["base_url"] is None and llms["a"]["base_url"] == "http://127.0.0.1:9/v1"
    assert wh.read_grades(con)["grader"].unique().to_list() == ["imported"]
    assert wh.read_gradable(con).height == 0  # imported scores are never regraded
    assert wh.pending_pairs(con, ["a", "b"]).height == 0  # results-only prompts are never asked
    assert wh.pending_counts(con).height == 0
    assert wh.read_datasets(con)["collectable"].to_list() == [False]
    query_costs = wh.read_query_costs(con, ["b"], ["train", "validation", "test"])["cost"].sort().to_list()
    assert query_costs == pytest.approx([0.001 * (i + 7) for i in range(6)])  # per-query USD kept
    again = import_results(con, path, "harness", catalog=catalog)
    assert (again.answers_stored, again.prompts_added, again.models_added_to_catalog) == (0, 0, [])
    assert wh.read_responses(con).height == 12


def test_results_naming_an_llm_outside_the_catalog_need_a_catalog_to_extend(con, tmp_path):
    path = tmp_path / "results.csv"
    _long().write_csv(path)
    with pytest.raises(ValueError, match="model='a': not in the catalog"):
        import_results(con, path, "harness")
    assert wh.read_prompts(con).height == 0 and wh.read_responses(con).height == 0


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("score", 1.5, r"1\.5"), ("cost_usd", float("inf"), "cost is not finite: inf"), ("cost_usd", -1.0, "negative")],
)
def test_bad_results_change_nothing(con, tmp_path, column, value, message):
    catalog = tmp_path / "llms.yaml"
    catalog.write_text(CATALOG)
    path = tmp_path / "results.parquet"
    _long().with_columns(pl.Series(column, [*_long()[column][:-1], value])).write_parquet(path)
    with pytest.raises(ValueError, match=message):
        import_results(con, path, "harness", catalog=catalog)
    assert wh.read_prompts(con).height == 0 and wh.read_llms(con).height == 0
    assert catalog.read_text() == CATALOG


def test_results_for_registered_prompts_keep_their_text_and_split(con, tmp_path, mmlu_like_dir):
    prompts = import_mmlu_pro(con, mmlu_like_dir)
    catalog = tmp_path / "llms.yaml"
    catalog.write_text(CATALOG)
    ids = [p.split("/")[1] for p in prompts["prompt_id"].head(3)]
    pl.DataFrame({"model": "c", "prompt_id": ids, "score": [1, 0, 1], "cost": 0.1}).write_csv(tmp_path / "r.csv")
    report = import_results(con, tmp_path / "r.csv", "mmlu_pro", catalog=catalog)
    assert report.prompts_added == 0 and report.grades_written == 3
    columns = ["prompt_id", "split", "text", "prompt"]
    assert wh.read_prompts(con).select(columns).equals(prompts.sort("prompt_id").select(columns))
