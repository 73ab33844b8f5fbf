"""Sensors: onboarding (a new or re-pointed LLM in the catalog gets a partition and a profiling run), coverage drift
(a drifted coverage report's traffic prompts join the validation set), rollout (the challenger promoted, or the
champion rolled back, by configured rules) and the automation sensor that evaluates the assets' automation
conditions (features and router follow new data)."""

# Dagster resolves resource types from annotations at import: no `from __future__ import annotations`.

import json
import os

import dagster as dg

import warehouse as wh
from assets.coverage import traffic_coverage, traffic_validation_prompts
from assets.profiling import endpoint_fingerprint, llm_partitions
from assets.rechecks import drift_rechecks
from assets.resources import MlflowResource, RolloutResource, WarehouseResource
from assets.rollout import RolloutUnavailable, rollout_evidence, rollout_report
from pipelines.jobs import add_traffic_prompts_job, profile_llm_job, refresh_grades_job
from pipelines.onboarding import estimate_tags, onboarding_settings, profiling_ops_config


@dg.sensor(job=profile_llm_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def llm_onboarding_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult | dg.SkipReason:
    """Adds a partition for each new active catalog LLM and launches its profiling; a changed endpoint or model
    id launches a new profiling run too. The catalog is the warehouse resource's, as the assets read it; the
    cursor keeps each LLM's fingerprint. An invalid catalog is skipped with its errors (nothing is launched). Each
    run takes its onboarding settings from the environment (``pipelines.onboarding``) and carries in its tags what
    it is estimated to ask and cost."""
    path = str(warehouse.catalog())
    try:
        catalog = wh.load_catalog(path)
        settings = onboarding_settings(os.environ)
    except (wh.CatalogError, ValueError) as exc:
        return dg.SkipReason(str(exc))
    seen = json.loads(context.cursor) if context.cursor else {}
    entries = {row["name"]: row for row in catalog.iter_rows(named=True) if row["active"]}
    current = {name: endpoint_fingerprint(row) for name, row in entries.items()}
    changed = sorted(name for name, fp in current.items() if seen.get(name) != fp)
    existing = set(context.instance.get_dynamic_partitions(llm_partitions.name))
    unpartitioned = [name for name in changed if name not in existing]  # a synced catalog may have added some
    if not changed:
        return dg.SkipReason(f"no new or changed LLMs in {path}")
    ops = {"llm_catalog": {"config": {"path": path}}, **profiling_ops_config(settings)}
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{name}:{current[name]}",
                partition_key=name,
                run_config={"ops": ops},
                tags={
                    "uniroute/onboarding": "changed" if name in seen else "new",
                    **estimate_tags(warehouse, entries[name], settings),
                },
            )
            for name in changed
        ],
        dynamic_partitions_requests=[llm_partitions.build_add_request(unpartitioned)] if unpartitioned else [],
        cursor=json.dumps({**seen, **current}),
    )


@dg.sensor(job=add_traffic_prompts_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING)
def coverage_drift_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """When a new ``traffic_coverage`` report drifted past its bounds, launches the run adding the stored traffic
    prompts it proposes to the validation set, graded by its judge (one run per report: its run key). Nothing is
    added without sampled traffic or a judge. The cursor keeps the last report seen (its event's storage id)."""
    records = context.instance.fetch_materializations(traffic_coverage.key, limit=1).records
    if not records:
        return dg.SkipReason("traffic_coverage has no report yet")
    event = records[0]
    if context.cursor and event.storage_id <= int(context.cursor):
        return dg.SkipReason(f"no coverage report since the one seen (event {context.cursor})")
    report = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    cursor = str(event.storage_id)
    if not report.get("drifted"):
        return dg.SensorResult(skip_reason=str(report.get("reason", "coverage holds")), cursor=cursor)
    if not report.get("to_add"):
        why = "no sampled traffic prompt left to add (sampled traffic is opt-in: traffic.sample_rate)"
        return dg.SensorResult(skip_reason=f"{report['reason']}; {why}", cursor=cursor)
    if not report.get("judge"):
        why = "traffic_coverage.config.judge is empty: no judge to grade the traffic prompts, nothing added"
        return dg.SensorResult(skip_reason=f"{report['reason']}; {why}", cursor=cursor)
    config = {"request_ids": report["to_add"], "judge": report["judge"]}
    request = dg.RunRequest(
        run_key=f"traffic_coverage:{event.storage_id}",
        run_config={"ops": {traffic_validation_prompts.key.path[-1]: {"config": config}}},
        tags={"uniroute/coverage": f"router {report['router_version']}: {len(config['request_ids'])} prompts"},
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


@dg.sensor(job=refresh_grades_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def drift_confirmed_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """When a ``drift_rechecks`` report since the last tick confirmed that an LLM changed, launches a run of that
    LLM's ``graded_responses`` (its new answers are graded already: it grades what is left and checks them again),
    so that its features and then the router follow by automation and learn from the new answers. One run per LLM
    and report (its run key); the cursor keeps the last report seen (its event's storage id)."""
    seen = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=drift_rechecks.key, after_storage_id=seen), limit=100, ascending=True
    ).records
    if not records:
        return dg.SkipReason(f"no drift re-check since the one seen (event {seen})" if seen else "no re-check yet")
    requests = {}
    for event in records:
        report = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        tags = {"uniroute/drift": f"router {report.get('router_version')}: confirmed by asking again"}
        for llm in report.get("confirmed_llms") or []:
            key = f"drift_rechecks:{event.storage_id}:{llm}"
            requests[llm] = dg.RunRequest(run_key=key, partition_key=llm, tags=tags)  # the latest report's, per LLM
    cursor = str(records[-1].storage_id)
    if not requests:
        return dg.SensorResult(skip_reason="no drift confirmed by the re-checks since the last tick", cursor=cursor)
    return dg.SensorResult(run_requests=list(requests.values()), cursor=cursor)


#: Evaluates ``assets/automation.py``'s conditions; on by default, unlike Dagster's own default sensor.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "uniroute_automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Features follow checked grades and new cluster maps; the router follows new features.",
)


#: The rollout sensor's name; its moves are recorded as moved by ``sensor:<name>``.
ROLLOUT_SENSOR = "uniroute_rollout_sensor"


@dg.sensor(name=ROLLOUT_SENSOR, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def rollout_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    rollout: RolloutResource,
) -> dg.SensorResult | dg.SkipReason:
    """Applies the rollout rules (the ``rollout`` resource) to the champion's and challenger's traffic: promotes the
    challenger when it is not worse with confidence, rolls ``champion`` back to ``previous-champion`` on a guardrail
    breach, else skips saying why (too few requests among the reasons). Each move is recorded in MLflow with the
    reason (``serving.alias_moves``) and reported as an observation of ``rollout_report`` with it."""
    from serving import alias_moves

    try:
        evidence = rollout_evidence(warehouse, mlflow, rollout)
    except RolloutUnavailable as exc:
        return dg.SkipReason(str(exc))
    decided = evidence.decision
    if decided.action == "hold" or not rollout.enabled:
        return dg.SkipReason(f"{decided.action}{'' if rollout.enabled else ' (disabled)'}: {decided.reason}")
    who, name = f"sensor:{ROLLOUT_SENSOR}", mlflow.model_name
    try:
        if decided.action == "promote":
            moves = alias_moves.promote_version(name, evidence.challenger, who, decided.reason)
        else:
            moves = alias_moves.rollback(name, who, decided.reason)
    except alias_moves.AliasMoveError as exc:  # an alias moved by hand since the evidence was read
        return dg.SkipReason(f"{decided.action} not made: {exc}")
    context.log.info(f"{decided.action}: {decided.reason}")
    said = "; ".join(f"{m.alias}: {m.from_version or 'none'} -> {m.to_version or 'none'}" for m in moves)
    numbers = {k: v for k, v in decided.numbers.items() if v is not None}
    observation = dg.AssetObservation(
        asset_key=rollout_report.key,
        description=f"{decided.action}: {decided.reason}",
        metadata={"action": decided.action, "reason": decided.reason, "moves": said, **numbers},
    )
    return dg.SensorResult(asset_events=[observation])
