"""Schedules: nightly profiling of what is missing, weekly retraining of the cluster map."""

# Dagster resolves resource types from annotations at import: no `from __future__ import annotations`.

import os

import dagster as dg
import duckdb

import warehouse as wh
from assets.resources import WarehouseResource
from assets.routing import cluster_map
from pipelines.jobs import profile_llm_job

#: Cron strings, overridable per deployment.
NIGHTLY_CRON = os.environ.get("UNIROUTE_NIGHTLY_CRON", "0 2 * * *")
WEEKLY_CRON = os.environ.get("UNIROUTE_WEEKLY_CRON", "0 3 * * 0")

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
    the warehouse resource's file, read-only."""
    try:
        with warehouse.connect_read_only() as con:
            pending = wh.pending_counts(con)
    except duckdb.IOException as exc:  # a run holds the file's write lock: try again next tick
        return dg.SkipReason(f"warehouse busy: {type(exc).__name__}")
    except (FileNotFoundError, wh.SchemaError) as exc:  # nothing profiled yet, or the next run migrates it
        return dg.SkipReason(str(exc))
    known = set(context.instance.get_dynamic_partitions("llm"))
    requests = [
        dg.RunRequest(partition_key=row["model"], tags={"uniroute/pending": str(row["pending"])})
        for row in pending.iter_rows(named=True)
        if row["model"] in known
    ]
    return requests or dg.SkipReason("every active LLM has answered every validation prompt")


weekly_cluster_map_schedule = dg.ScheduleDefinition(
    name="weekly_cluster_map_schedule", job=retrain_cluster_map_job, cron_schedule=WEEKLY_CRON, execution_timezone="UTC"
)
