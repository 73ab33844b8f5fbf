"""The nightly schedule requests exactly the partitions that have something to collect, reading the warehouse of
the resource the assets use, read-only; the daily traffic schedule's tick runs the traffic loop (its checks follow by
automation) and deletes sampled user text past the retention the environment sets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

import warehouse as wh
from assets.resources import WarehouseResource
from pipelines.schedules import DRIFT_RECHECK_ENV, nightly_profiling_schedule, traffic_run_config
from profiling.importers import import_mmlu_pro
from tests.online_traffic import CLUSTER, DEGRADED, champion_shape, degraded_traffic, write_gateway_files

HOLD_READ_ONLY = "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); "
HOLD_READ_ONLY += "sys.stdin.read()"


def _evaluate(instance, warehouse=None):
    resources = {"warehouse": warehouse or WarehouseResource()}
    return nightly_profiling_schedule(dg.build_schedule_context(instance=instance, resources=resources))


def _profiled(path, mmlu_like_dir) -> int:
    """A warehouse where five LLMs stand at different points; returns the number of validation prompts."""
    with wh.connect(path) as con:
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
    return len(val)


def test_nightly_requests_llms_with_missing_or_repointed_answers_only(tmp_path, monkeypatch, mmlu_like_dir):
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    n_validation = _profiled(tmp_path / "w.duckdb", mmlu_like_dir)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("llm", ["done", "behind", "retired", "repointed"])
        result = _evaluate(instance)
    assert [(r.partition_key, r.tags["uniroute/pending"]) for r in result] == [
        ("behind", str(n_validation - 5)),
        ("repointed", str(n_validation)),  # answered by a model it no longer points at
    ]


def test_nightly_reads_the_configured_warehouse_beside_other_readers(tmp_path, monkeypatch, mmlu_like_dir):
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "default.duckdb"))  # not the deployment's
    deployed = tmp_path / "deployed.duckdb"
    _profiled(deployed, mmlu_like_dir)
    # another process reads the warehouse meanwhile (the gateway, a CLI): a writer would be locked out
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_READ_ONLY, str(deployed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("llm", ["behind"])
            result = _evaluate(instance, WarehouseResource(path=str(deployed)))
    finally:
        holder.communicate("", timeout=30)
    assert [r.partition_key for r in result] == ["behind"]
    assert not (tmp_path / "default.duckdb").exists()  # nothing created where the environment pointed


def test_nightly_skips_when_nothing_is_missing_or_nothing_exists_yet(tmp_path, monkeypatch):
    with dg.instance_for_test() as instance:
        missing = _evaluate(instance, WarehouseResource(path=str(tmp_path / "none.duckdb")))
        wh.connect(tmp_path / "empty.duckdb").close()
        empty = _evaluate(instance, WarehouseResource(path=str(tmp_path / "empty.duckdb")))
    assert isinstance(missing, dg.SkipReason) and "no warehouse at" in missing.skip_message
    assert not (tmp_path / "none.duckdb").exists()  # a reader creates nothing
    assert isinstance(empty, dg.SkipReason) and "every active LLM" in empty.skip_message


HOLD_WRITE = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('open', flush=True); sys.stdin.read()"


def test_nightly_waits_for_a_writer_and_then_runs_every_active_llm_rather_than_skip_the_night(
    tmp_path, monkeypatch, mmlu_like_dir
):
    from pipelines import schedules

    path, catalog = tmp_path / "w.duckdb", tmp_path / "llms.yaml"
    _profiled(path, mmlu_like_dir)
    entries = [{"name": n, "active": n != "retired"} for n in ["done", "behind", "retired", "unpartitioned"]]
    defaults = {"base_url": "http://127.0.0.1:9/v1", "usd_per_mtok_in": 1.0, "usd_per_mtok_out": 1.0}
    catalog.write_text(yaml.safe_dump({"defaults": defaults, "llms": entries}))
    monkeypatch.setattr(schedules, "BUSY_WAIT_S", 0.5)
    # a long write holds the file (embeddings, a router): the one tick of the night cannot read what is missing
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("llm", ["done", "behind", "retired"])
            started = time.monotonic()
            result = _evaluate(instance, WarehouseResource(path=str(path), catalog_path=str(catalog)))
            waited = time.monotonic() - started
    finally:
        holder.communicate("", timeout=30)
    assert waited >= 0.4, result  # it waited for the writer first (the last retry may stop short of 0.5 s)
    assert not isinstance(result, dg.SkipReason), result.skip_message
    assert [(r.partition_key, r.tags["uniroute/pending"]) for r in result] == [
        ("done", "unknown (warehouse busy)"),  # each run plans against the warehouse itself: "done" asks nothing
        ("behind", "unknown (warehouse busy)"),
    ]


def _sampled(request_id: str, days_ago: float) -> dict:
    """A sampled request as the gateway's traffic log records it: stored user text."""
    return {
        "request_id": request_id,
        "at": datetime.now(UTC) - timedelta(days=days_ago),
        "router_version": "1",
        "chosen_llm": DEGRADED,
        "prompt": f"the secret of {request_id}",
        "messages": [{"role": "user", "content": f"the secret of {request_id}"}],
        "answer": "42",
    }


@pytest.mark.e2e
def test_the_daily_traffic_tick_runs_the_loop_its_checks_follow_and_old_user_text_goes(
    materialised_pipeline, monkeypatch
):
    from pipelines.definitions import defs
    from pipelines.ticks import AutomationTicks
    from serving import traffic

    home = materialised_pipeline
    llms, k = champion_shape(home.tracking_uri)
    write_gateway_files(home.warehouse, *degraded_traffic(llms, k))
    with traffic.TrafficLog(traffic.default_directory()) as log:  # nobody runs anything by hand
        assert log.record_all([_sampled("old", days_ago=8), _sampled("recent", days_ago=1)])
    monkeypatch.setenv("UNIROUTE_TRAFFIC_RETENTION_DAYS", "7")
    checks: dict[str, dg.AssetCheckEvaluation] = {}

    def record(names, partition, outcome, seconds):
        (check,) = outcome.get_asset_check_evaluations()
        checks[partition] = check

    with home.instance() as instance:
        automation = AutomationTicks(defs, instance, defs.resources, on_run=record)
        assert automation.tick() == []  # the daemon is on: nothing to do before the loop runs
        schedule = defs.resolve_schedule_def("daily_traffic_schedule")
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING  # on without anyone turning it on
        tick = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        (request,) = tick.run_requests
        run = defs.resolve_job_def(schedule.job_name).execute_in_process(
            run_config=request.run_config, tags=request.tags, instance=instance
        )
        assert run.success
        followed = automation.until_idle()
        samples = home.latest_metadata(instance, "traffic_samples")
        evaluation = home.latest_metadata(instance, "online_evaluation")

    materialised = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
    loaded = {"routing_decisions", "traffic_feedback", "traffic_samples"}
    assert materialised == loaded | {"traffic_outcomes", "online_evaluation", "traffic_coverage"}
    assert evaluation["alarms"].startswith(f"{DEGRADED}, cluster {CLUSTER}: observed error 1.00 over 100 requests")
    # each LLM's evaluation and check followed by automation; the degraded LLM's warns
    assert sorted(followed) == sorted((["llm_traffic_evaluation"], llm) for llm in llms)
    assert not checks.pop(DEGRADED).passed and all(check.passed for check in checks.values())
    # the retention the environment set: the old request's text is gone from the warehouse and from every file
    assert (samples["retention_days"], samples["rows_deleted_past_retention"], samples["rows_total"]) == (7, 1, 1)
    kept = traffic.read_traffic_files(traffic.traffic_files(loaded=True))
    assert kept["request_id"].to_list() == ["recent"]
    with wh.connect(home.warehouse) as con:
        assert con.execute("SELECT request_id FROM traffic_samples").fetchall() == [("recent",)]


def test_a_retention_that_is_not_a_number_fails_the_tick_naming_it(monkeypatch):
    from pipelines.definitions import defs

    monkeypatch.setenv("UNIROUTE_TRAFFIC_RETENTION_DAYS", "a week")
    with dg.instance_for_test() as instance, pytest.raises(dg.DagsterError) as raised:
        defs.resolve_schedule_def("daily_traffic_schedule").evaluate_tick(dg.build_schedule_context(instance=instance))
    assert str(raised.value.__cause__) == "UNIROUTE_TRAFFIC_RETENTION_DAYS='a week': expected a number"


def test_the_traffic_loops_judge_and_its_cap_come_from_the_environment_as_valid_run_config():
    from pipelines.definitions import defs

    environ = {"UNIROUTE_TRAFFIC_JUDGE": "cheap", "UNIROUTE_TRAFFIC_JUDGE_USD_PER_DAY": "0.5", "OTHER": "x"}
    config = traffic_run_config(environ)
    assert config == {
        "ops": {
            "traffic_outcomes": {"config": {"judge": "cheap", "judge_usd_per_day": 0.5}},
            "traffic_coverage": {"config": {"judge": "cheap"}},  # the judge of the prompts coverage drift adds
        }
    }
    both = traffic_run_config({**environ, "UNIROUTE_TRAFFIC_RETENTION_DAYS": "7"})
    assert dg.validate_run_config(defs.resolve_job_def("traffic_loop"), both)  # the job's own config schema
    assert traffic_run_config({"UNIROUTE_TRAFFIC_JUDGE": " "}) == {}  # unset or blank: the assets' defaults


def test_the_drift_rechecks_budget_comes_from_the_environment_as_valid_run_config(monkeypatch):
    from pipelines.definitions import defs

    monkeypatch.setenv("UNIROUTE_DRIFT_RECHECK_BUDGET_USD", "0.25")
    schedule = defs.resolve_schedule_def("daily_drift_recheck_schedule")
    with dg.instance_for_test() as instance:
        (request,) = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    assert request.run_config == {"ops": {"drift_rechecks": {"config": {"budget_usd": 0.25}}}}
    assert dg.validate_run_config(defs.resolve_job_def("drift_recheck"), request.run_config)
    with pytest.raises(ValueError, match="UNIROUTE_DRIFT_RECHECK_BUDGET_USD='lots': expected a number"):
        traffic_run_config({"UNIROUTE_DRIFT_RECHECK_BUDGET_USD": "lots"}, DRIFT_RECHECK_ENV)


def test_the_traffic_schedules_cron_is_set_by_the_environment():
    code = "from pipelines.schedules import daily_traffic_schedule as s; print(s.cron_schedule)"
    env = {**os.environ, "UNIROUTE_TRAFFIC_CRON": "30 4 * * *"}
    root = Path(__file__).resolve().parents[2]  # this checkout's modules
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "30 4 * * *"
