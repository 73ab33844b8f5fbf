"""A real DuckDB file: migrations, idempotent writes, and bad frames that change nothing."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import warehouse as wh
from warehouse.schema import MIGRATIONS


@pytest.fixture
def con(tmp_path):
    con = wh.connect(tmp_path / "w.duckdb")
    yield con
    con.close()


def _prompts(n: int = 3, split: str = "validation") -> pl.DataFrame:
    ids = [f"ds/{i}" for i in range(n)]
    return pl.DataFrame(
        {
            "prompt_id": ids,
            "dataset": "ds",
            "split": split,
            "text": [f"question {i}" for i in range(n)],
            "prompt": [f"Q: question {i}" for i in range(n)],
            "reference": "A",
            "grader": "mmlu_pro_letter",
            "content_hash": [f"h{i}" for i in range(n)],
        }
    )


def _responses(model: str, ids: list[str], text: str = "the answer is (A)") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": model,
            "prompt_id": ids,
            "response": text,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "latency_ms": 12.5,
            "cost_usd": 1e-6,
            "prompt_hash": "x",
            "run_id": "run-1",
        }
    )


def test_migrations_apply_once_and_reopen_keeps_data(tmp_path):
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        assert wh.schema_version(con) == len(MIGRATIONS)
        wh.upsert_prompts(con, _prompts())
    with wh.connect(path) as con:
        assert wh.schema_version(con) == len(MIGRATIONS)
        assert wh.read_prompts(con).height == 3


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        con.execute("INSERT INTO schema_migrations VALUES (999, now())").fetchall()
    with pytest.raises(wh.SchemaError, match="999"):
        wh.connect(path)


def test_responses_are_insert_only_and_pending_pairs_shrink(con):
    wh.upsert_prompts(con, _prompts(3))
    assert wh.pending_pairs(con, ["m1", "m2"]).height == 6
    assert wh.insert_responses(con, _responses("m1", ["ds/0", "ds/1"])) == 2
    assert wh.insert_responses(con, _responses("m1", ["ds/1", "ds/2"], text="changed")) == 1  # ds/1 kept
    stored = wh.read_responses(con, ["m1"])
    assert stored.height == 3
    assert stored.filter(pl.col("prompt_id") == "ds/1")["response"].item() == "the answer is (A)"
    assert wh.pending_pairs(con, ["m1", "m2"])["model"].to_list() == ["m2"] * 3


def test_failures_accumulate_and_clear_on_success(con):
    wh.upsert_prompts(con, _prompts(2))
    failure = pl.DataFrame(
        {"model": "m1", "prompt_id": "ds/0", "attempts": 3, "last_error_class": "HTTP 503", "run_id": "r1"}
    )
    wh.record_failures(con, failure)
    wh.record_failures(con, failure.with_columns(last_error_class=pl.lit("ReadTimeout")))
    row = wh.read_failures(con).row(0, named=True)
    assert row["attempts"] == 6 and row["last_error_class"] == "ReadTimeout"
    wh.insert_responses(con, _responses("m1", ["ds/0"]))
    assert wh.read_failures(con).height == 0


def test_bad_frames_name_the_field_and_change_nothing(con):
    wh.upsert_prompts(con, _prompts(2))
    before = wh.read_prompts(con)
    with pytest.raises(wh.WarehouseInputError, match=r"prompts\.split=.dev"):
        wh.upsert_prompts(con, _prompts(2, split="dev"))  # CHECK constraint
    with pytest.raises(wh.WarehouseInputError, match=r"prompts\.text"):
        wh.upsert_prompts(con, _prompts(2).drop("text"))
    with pytest.raises(wh.WarehouseInputError, match=r"grades\.score"):
        wh.upsert_grades(
            con,
            pl.DataFrame({"model": "m", "prompt_id": "ds/0", "score": ["high"], "grader": "g", "grader_version": "1"}),
        )
    with pytest.raises(wh.WarehouseInputError, match=r"grades\.score=1\.5"):
        wh.upsert_grades(
            con,
            pl.DataFrame(
                {"model": "m", "prompt_id": ["ds/0", "ds/1"], "score": [1.0, 1.5], "grader": "g", "grader_version": "1"}
            ),
        )
    with pytest.raises(wh.WarehouseInputError, match="duplicate key"):
        wh.insert_responses(con, _responses("m1", ["ds/0", "ds/0"]))
    assert wh.read_prompts(con).equals(before)
    assert wh.read_grades(con).height == 0 and wh.read_responses(con).height == 0


def test_grades_become_router_outcomes(con):
    wh.upsert_prompts(con, pl.concat([_prompts(2), _prompts(4, split="train").tail(2)]))
    grades = pl.DataFrame(
        {
            "model": "m",
            "prompt_id": ["ds/0", "ds/1", "ds/3"],
            "score": [1.0, 0.0, 0.5],
            "grader": "g",
            "grader_version": "1",
        }
    )
    assert wh.upsert_grades(con, grades) == 3
    assert wh.upsert_grades(con, grades.with_columns(score=pl.lit(1.0), grader_version=pl.lit("2"))) == 3
    outcomes = wh.read_outcomes(con, splits=["validation"])
    assert outcomes.columns == ["model", "prompt_id", "score"]
    assert outcomes["score"].to_list() == [1.0, 1.0]


def test_catalog_upsert_keeps_added_at(con):
    llm = pl.DataFrame(
        {
            "name": "m",
            "base_url": "http://127.0.0.1:1/v1",
            "model_id": "m",
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 2.0,
            "max_concurrency": 4,
            "active": True,
        }
    )
    wh.upsert_llms(con, llm)
    first = wh.read_llms(con)["added_at"].item()
    wh.upsert_llms(con, llm.with_columns(usd_per_mtok_out=pl.lit(3.0)))
    row = wh.read_llms(con).row(0, named=True)
    assert row["usd_per_mtok_out"] == 3.0 and row["added_at"] == first


def test_embeddings_round_trip(con):
    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    assert wh.upsert_embeddings(con, "emb-1", ["a", "b", "c"], vectors) == 3
    assert wh.upsert_embeddings(con, "emb-1", ["a"], vectors[:1] + 1) == 0
    got = wh.read_embeddings(con, "emb-1", ["a", "c", "zz"])
    assert sorted(got) == ["a", "c"] and np.array_equal(got["a"], vectors[0])
    assert wh.read_embeddings(con, "emb-2", ["a"]) == {}
