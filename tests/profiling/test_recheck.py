"""Asking again against a real replay server and DuckDB file: answers a run that stopped before recording them already
asked again are not asked a third time (their earlier grades come back from the archive), an unchanged endpoint is
cleared, and an LLM without an endpoint is named and left alone."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

import warehouse as wh
from profiling.collector import RetryPolicy, active_llms, run_collection
from profiling.grading import grade_responses
from profiling.importers import import_mmlu_pro
from profiling.recheck import _ReplacingSink, recheck_cells
from profiling.staging import collect
from replay import ReplayServer
from router_core import recheck_plan

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, timeout_s=5.0)
SPLITS = ["validation", "test"]
CLUSTER_OF = {"math": 0, "history": 1, "biology": 2}


def _catalog(base_url: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": ["math-pro", "imported"],
            "base_url": [base_url, None],
            "model_id": ["math-pro", "imported"],
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 1.0,
            "max_concurrency": 4,
            "active": True,
        }
    )


def test_a_stopped_re_check_is_finished_without_asking_anything_twice(tmp_path, mmlu_like_dir):
    with wh.connect(tmp_path / "w.duckdb") as con, ReplayServer(mmlu_like_dir) as server:
        import_mmlu_pro(con, mmlu_like_dir, seed=0)
        wh.upsert_llms(con, _catalog(server.base_url))
        collect(con, ["math-pro"], SPLITS, policy=FAST, progress=False)
        grade_responses(con, ["math-pro"])
        categories = wh.read_prompts(con).select("prompt_id", "category")
        clusters = categories.select("prompt_id", cluster=pl.col("category").replace_strict(CLUSTER_OF))
        cells = pl.DataFrame({"llm": ["math-pro", "imported"], "cluster": [0, 0], "count": [10, 10], "z": [2.0, 1.5]})
        # a run that asked five answers again, then stopped before grading and recording them
        stored = wh.read_recheck_answers(con, "math-pro", SPLITS).join(clusters, on="prompt_id")
        plan = recheck_plan(stored, cells, per_cell=12)
        stopped = wh.read_pair_requests(con, "math-pro", plan["prompt_id"].head(5).to_list())
        sink = _ReplacingSink(con, datetime.now(UTC).replace(tzinfo=None))
        run_collection(sink, stopped, active_llms(con, ["math-pro"]), policy=FAST, progress=False)
        server.request_log.reset()

        report = recheck_cells(con, cells, clusters, "1", budget_usd=1.0, per_cell=12, policy=FAST)
        asked = server.request_log.frame()

    assert sorted(asked["prompt_id"]) == sorted(plan["prompt_id"].tail(7)) and set(asked["count"]) == {1}
    assert (report.planned, report.asked, report.not_asked) == (12, 7, 0)
    (row,) = report.cells.to_dicts()
    assert (row["llm"], row["cluster"], row["asked"], row["worse"], row["better"]) == ("math-pro", 0, 12, 0, 0)
    assert not row["changed"] and row["rated"] == 10 and row["router_version"] == "1"
    assert report.notes == ["imported: not asked again: not an active catalog LLM with an endpoint"]
