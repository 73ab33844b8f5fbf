"""The run queue as the project's dagster.yaml sets it, behind a real dagster-daemon: two profiling runs of one LLM
launched together take turns, so nothing is asked (and paid for) twice."""

from __future__ import annotations

import time
from types import SimpleNamespace

import polars as pl

from benchmarks import parallel_profiling as bench
from benchmarks.collection import replay_server, served_ok_counts


def test_two_runs_of_one_llm_launched_together_take_turns_and_pay_once(tmp_path, mmlu_like_dir):
    prompts = pl.read_parquet(mmlu_like_dir / "questions.parquet")["question_id"].to_list()
    models = bench._models(mmlu_like_dir, 1, prompts)
    pristine = tmp_path / "pristine.duckdb"
    bench._warehouse(pristine, mmlu_like_dir, prompts)
    args = SimpleNamespace(llms=8, concurrency=8, code_server_workers=0)  # 8 runs may run at once
    with replay_server(mmlu_like_dir, "--latency-ms", "400") as server:  # asking takes a while
        scenario = bench.Scenario(tmp_path / "run", pristine, models, f"{server}/v1", args)
        with scenario, scenario.instance() as instance:
            deadline = time.monotonic() + 120
            while not scenario.runs(instance):  # the onboarding sensor launches the first run
                assert time.monotonic() < deadline, "the sensor launched nothing"
                time.sleep(0.2)
            scenario.launch(models["model"][0])  # a user launches the same LLM again meanwhile
            first, second = sorted(scenario.wait(instance, 2, 300), key=lambda r: r.create_timestamp)
        served = served_ok_counts(server)
    assert first.dagster_run.is_success and second.dagster_run.is_success
    assert second.create_timestamp.timestamp() < first.end_time  # queued while the first was asking
    assert second.start_time >= first.end_time  # but started only once it had finished
    assert served["count"].sum() == len(prompts) and served.filter(pl.col("count") > 1).height == 0
