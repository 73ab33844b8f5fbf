"""Sensors: onboarding (a new or re-pointed LLM in the catalog gets a partition and a profiling run) and the
automation sensor that evaluates the assets' automation conditions (features and router follow new data)."""

# Dagster resolves resource types from annotations at import: no `from __future__ import annotations`.

import json

import dagster as dg

import warehouse as wh
from assets.profiling import endpoint_fingerprint, llm_partitions
from assets.resources import WarehouseResource
from pipelines.jobs import profile_llm_job


@dg.sensor(job=profile_llm_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def llm_onboarding_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult | dg.SkipReason:
    """Adds a partition for each new active catalog LLM and launches its profiling; a changed endpoint or model
    id launches a new profiling run too. The catalog is the warehouse resource's, as the assets read it; the
    cursor keeps each LLM's fingerprint. An invalid catalog is skipped with its errors (nothing is launched)."""
    path = str(warehouse.catalog())
    try:
        catalog = wh.load_catalog(path)
    except wh.CatalogError as exc:
        return dg.SkipReason(str(exc))
    seen = json.loads(context.cursor) if context.cursor else {}
    current = {row["name"]: endpoint_fingerprint(row) for row in catalog.iter_rows(named=True) if row["active"]}
    changed = sorted(name for name, fp in current.items() if seen.get(name) != fp)
    existing = set(context.instance.get_dynamic_partitions(llm_partitions.name))
    unpartitioned = [name for name in changed if name not in existing]  # a synced catalog may have added some
    if not changed:
        return dg.SkipReason(f"no new or changed LLMs in {path}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{name}:{current[name]}",
                partition_key=name,
                run_config={"ops": {"llm_catalog": {"config": {"path": path}}}},
                tags={"uniroute/onboarding": "changed" if name in seen else "new"},
            )
            for name in changed
        ],
        dynamic_partitions_requests=[llm_partitions.build_add_request(unpartitioned)] if unpartitioned else [],
        cursor=json.dumps({**seen, **current}),
    )


#: Evaluates ``assets/automation.py``'s conditions; on by default, unlike Dagster's own default sensor.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "uniroute_automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Features follow checked grades and new cluster maps; the router follows new features.",
)
