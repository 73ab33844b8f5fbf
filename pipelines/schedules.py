"""Schedules: nightly profiling of what is missing, weekly retraining of the cluster map, the daily traffic loop and
the daily re-check of suspected drifts (off until turned on: it pays for answers)."""

# Dagster resolves resource types from annotations at import: no `from __future__ import annotations`.

import os
from collections.abc import Mapping

import dagster as dg
import duckdb

import warehouse as wh
from assets.resources import WarehouseResource
from assets.routing import cluster_map
from pipelines.jobs import drift_recheck_job, profile_llm_job, traffic_loop_job
from pipelines.onboarding import onboarding_settings, profiling_ops_config

#: Cron strings, overridable per deployment.
NIGHTLY_CRON = os.environ.get("UNIROUTE_NIGHTLY_CRON", "0 2 * * *")
WEEKLY_CRON = os.environ.get("UNIROUTE_WEEKLY_CRON", "0 3 * * 0")
TRAFFIC_CRON = os.environ.get("UNIROUTE_TRAFFIC_CRON", "0 1 * * *")
DRIFT_RECHECK_CRON = os.environ.get("UNIROUTE_DRIFT_RECHECK_CRON", "30 1 * * *")
#: What the traffic loop's scheduled runs take from the environment, read at each tick (unset: the asset's default):
#: variable -> (op, config field, type). Sampled user text is kept RETENTION days (30); the judge is off (no judging).
TRAFFIC_ENV = {
    "UNIROUTE_TRAFFIC_RETENTION_DAYS": ((("traffic_samples", "retention_days"),), float),
    # one judge for sampled traffic and for the traffic prompts coverage drift adds to the validation set
    "UNIROUTE_TRAFFIC_JUDGE": ((("traffic_outcomes", "judge"), ("traffic_coverage", "judge")), str),
    "UNIROUTE_TRAFFIC_JUDGE_USD_PER_DAY": ((("traffic_outcomes", "judge_usd_per_day"),), float),
}
#: What the drift re-check's scheduled runs take from the environment (as :data:`TRAFFIC_ENV`): its USD cap per run.
DRIFT_RECHECK_ENV = {"UNIROUTE_DRIFT_RECHECK_BUDGET_USD": ((("drift_rechecks", "budget_usd"),), float)}
#: Seconds the nightly tick waits for a writer to let go of the warehouse (within Dagster's 60 s per evaluation).
BUSY_WAIT_S = 20.0

retrain_cluster_map_job = dg.define_asset_job(
    "retrain_cluster_map", selection=dg.AssetSelection.assets(cluster_map), description="Refit the cluster map."
)


@dg.schedule(job=profile_llm_job, cron_schedule=NIGHTLY_CRON, execution_timezone="UTC")
def nightly_profiling_schedule(
    context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource
) -> list[dg.RunRequest] | dg.SkipReason:
    """One profiling run per active LLM whose current endpoint has validation prompts to answer: new prompts,
    failures to retry, or a changed endpoint or model id (its earlier answers are archived and asked again);
    LLMs with nothing missing are left alone. Features and the router follow by declarative automation. Reads
    the warehouse resource's file, read-only. A night's tick is the only one that night: when a writer holds the
    file past :data:`BUSY_WAIT_S`, every active catalog LLM gets its run, and each run asks only what is missing."""
    known = set(context.instance.get_dynamic_partitions("llm"))
    try:
        with warehouse.connect_read_only(lock_wait_s=BUSY_WAIT_S) as con:
            pending = wh.pending_counts(con)
    except duckdb.IOException:  # a long write (embeddings, a router) holds the file
        return _every_active_llm(context, warehouse, known)
    except (FileNotFoundError, wh.SchemaError) as exc:  # nothing profiled yet, or the next run migrates it
        return dg.SkipReason(str(exc))
    config = _profiling_run_config()
    requests = [
        dg.RunRequest(partition_key=row["model"], run_config=config, tags={"uniroute/pending": str(row["pending"])})
        for row in pending.iter_rows(named=True)
        if row["model"] in known
    ]
    return requests or dg.SkipReason("every active LLM has answered every validation prompt")


def _every_active_llm(
    context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource, known: set[str]
) -> list[dg.RunRequest] | dg.SkipReason:
    """A run per active LLM of the catalog file (the warehouse being busy): each run plans what it asks itself."""
    try:
        catalog = wh.load_catalog(warehouse.catalog())
    except wh.CatalogError as exc:
        return dg.SkipReason(f"warehouse busy for {BUSY_WAIT_S:g} s, and the catalog is not valid: {exc}")
    names = [name for name in catalog.filter("active")["name"].to_list() if name in known]
    context.log.info(f"warehouse busy for {BUSY_WAIT_S:g} s: a run for each of {len(names)} active LLMs")
    config = _profiling_run_config()
    tags = {"uniroute/pending": "unknown (warehouse busy)"}
    return [dg.RunRequest(partition_key=name, run_config=config, tags=tags) for name in names]


def _profiling_run_config() -> dict:
    """A profiling run's config: the onboarding settings of the environment (``pipelines.onboarding``), so that a
    partial profile's refinement keeps to the same budget. A variable that is not a number fails the tick."""
    ops = profiling_ops_config(onboarding_settings(os.environ))
    return {"ops": ops} if ops else {}


weekly_cluster_map_schedule = dg.ScheduleDefinition(
    name="weekly_cluster_map_schedule", job=retrain_cluster_map_job, cron_schedule=WEEKLY_CRON, execution_timezone="UTC"
)


# On by default, unlike the others: it is what deletes sampled user text past its retention, so it must not wait for
# someone to turn it on; with no traffic and no champion its run loads nothing and evaluates nothing.
@dg.schedule(
    job=traffic_loop_job,
    cron_schedule=TRAFFIC_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_traffic_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The traffic loop once a day: decisions, feedback and sampled traffic loaded (sampled text past its retention
    deleted), outcomes, the online evaluation; each LLM's ``llm_traffic_evaluation`` and its check follow by
    automation. Its config comes from the environment (:data:`TRAFFIC_ENV`)."""
    return dg.RunRequest(run_config=traffic_run_config(os.environ))


def traffic_run_config(environ: Mapping[str, str], variables: Mapping = TRAFFIC_ENV) -> dict:
    """The traffic loop's run config from the :data:`TRAFFIC_ENV` variables (or ``variables``) set in ``environ``. A
    number that is not one fails the tick naming its variable (one the asset refuses, e.g. a negative retention,
    fails the run, naming its field)."""
    ops: dict[str, dict] = {}
    for name, (targets, kind) in variables.items():
        text = environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{name}={text!r}: expected a number") from None
        for op, field in targets:
            ops.setdefault(op, {"config": {}})["config"][field] = value
    return {"ops": ops} if ops else {}


# Off by default: a suspected drift is confirmed by paying for answers again (at most UNIROUTE_DRIFT_RECHECK_BUDGET_USD,
# else drift_rechecks.config.budget_usd, a run); after the traffic loop, whose online evaluation it reads.
@dg.schedule(job=drift_recheck_job, cron_schedule=DRIFT_RECHECK_CRON, execution_timezone="UTC")
def daily_drift_recheck_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Re-check the suspected drifts of the latest online evaluation once a day (:data:`DRIFT_RECHECK_ENV`)."""
    return dg.RunRequest(run_config=traffic_run_config(os.environ, DRIFT_RECHECK_ENV))
