"""The nightly schedule requests exactly the partitions that have something to collect."""

from __future__ import annotations

import dagster as dg
import polars as pl

import warehouse as wh
from pipelines.schedules import nightly_profiling_schedule
from profiling.importers import import_mmlu_pro


def test_nightly_requests_llms_with_missing_or_repointed_answers_only(tmp_path, monkeypatch, mmlu_like_dir):
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    with wh.connect() as con:
        prompts = import_mmlu_pro(con, mmlu_like_dir)
        names = ["done", "behind", "retired", "unpartitioned", "repointed"]
        wh.upsert_llms(
            con,
            pl.DataFrame(
                {
                    "name": names,
                    "base_url": "http://127.0.0.1:9/v1",
                    "model_id": names,
                    "usd_per_mtok_in": 1.0,
                    "usd_per_mtok_out": 1.0,
                    "max_concurrency": 1,
                    "active": [True, True, False, True, True],
                }
            ),
        )
        val = prompts.filter(pl.col("split") == "validation")["prompt_id"]
        answers = pl.DataFrame({"prompt_id": val, "response": "x", "prompt_hash": "h", "run_id": "r"})
        wh.insert_responses(con, answers.with_columns(model=pl.lit("done")))
        wh.insert_responses(con, answers.head(5).with_columns(model=pl.lit("behind")))
        old_endpoint = {"base_url": pl.lit("http://127.0.0.1:9/v1"), "model_id": pl.lit("old-model")}
        wh.insert_responses(con, answers.with_columns(model=pl.lit("repointed"), **old_endpoint))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("llm", ["done", "behind", "retired", "repointed"])
        result = nightly_profiling_schedule(dg.build_schedule_context(instance=instance))
    assert [(r.partition_key, r.tags["uniroute/pending"]) for r in result] == [
        ("behind", str(len(val) - 5)),
        ("repointed", str(len(val))),  # answered by a model it no longer points at
    ]


def test_nightly_skips_when_nothing_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "empty.duckdb"))
    with dg.instance_for_test() as instance:
        result = nightly_profiling_schedule(dg.build_schedule_context(instance=instance))
    assert isinstance(result, dg.SkipReason)
