"""The one ``Definitions`` object ``dagster dev`` loads (``[tool.dagster] module_name``)."""

from __future__ import annotations

import dagster as dg

from assets.coverage import traffic_coverage, traffic_validation_prompts
from assets.decisions import routing_decisions
from assets.embeddings import prompt_embeddings
from assets.outcomes import llm_traffic_evaluation, online_evaluation, traffic_outcomes
from assets.profiling import (
    graded_responses,
    imported_results,
    llm_catalog,
    llm_endpoint,
    llm_responses,
    prompt_set,
)
from assets.rechecks import drift_rechecks
from assets.resources import (
    ArtifactsResource,
    CollectorResource,
    EmbedderResource,
    MlflowResource,
    RolloutResource,
    WarehouseResource,
)
from assets.rollout import rollout_report
from assets.router import router
from assets.routing import cluster_map, llm_error_features
from assets.traffic import traffic_feedback, traffic_samples
from pipelines.jobs import (
    add_traffic_prompts_job,
    drift_recheck_job,
    profile_llm_job,
    refresh_grades_job,
    traffic_loop_job,
)
from pipelines.schedules import (
    daily_drift_recheck_schedule,
    daily_traffic_schedule,
    nightly_profiling_schedule,
    retrain_cluster_map_job,
    weekly_cluster_map_schedule,
)
from pipelines.sensors import (
    automation_sensor,
    coverage_drift_sensor,
    drift_confirmed_sensor,
    llm_onboarding_sensor,
    rollout_sensor,
)

defs = dg.Definitions(
    assets=[
        llm_catalog,
        llm_endpoint,
        prompt_set,
        imported_results,
        llm_responses,
        graded_responses,
        prompt_embeddings,
        cluster_map,
        llm_error_features,
        router,
        routing_decisions,
        traffic_feedback,
        traffic_samples,
        traffic_outcomes,
        online_evaluation,
        llm_traffic_evaluation,
        drift_rechecks,
        traffic_coverage,
        traffic_validation_prompts,
        rollout_report,
    ],
    jobs=[
        profile_llm_job,
        retrain_cluster_map_job,
        add_traffic_prompts_job,
        traffic_loop_job,
        drift_recheck_job,
        refresh_grades_job,
    ],
    schedules=[
        nightly_profiling_schedule,
        weekly_cluster_map_schedule,
        daily_traffic_schedule,
        daily_drift_recheck_schedule,
    ],
    sensors=[
        llm_onboarding_sensor,
        automation_sensor,
        coverage_drift_sensor,
        rollout_sensor,
        drift_confirmed_sensor,
    ],
    resources={
        "warehouse": WarehouseResource(),
        "collector": CollectorResource(),
        "embedder": EmbedderResource(),
        "artifacts": ArtifactsResource(),
        "mlflow": MlflowResource(),
        "rollout": RolloutResource(),
    },
    # Every op writes the warehouse (the long ones in the "duckdb" pool): the multiprocess executor's child
    # processes would hold the pool's slot while they import this code (docs/scale-out.md).
    executor=dg.in_process_executor,
)
