"""Confirming a drift the online evaluation suspects by asking the LLM again some prompts it has graded answers to
(``profiling.recheck``); each LLM's traffic check (``assets.outcomes.TRAFFIC_CHECK``) fails on a confirmed change."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import contextlib
import math

import dagster as dg
import polars as pl

import warehouse as wh
from assets.decisions import GROUP
from assets.metadata import markdown_table
from assets.outcomes import online_evaluation
from assets.resources import CollectorResource, MlflowResource, WarehouseResource
from profiling.completion import catalog_completer
from profiling.recheck import DEFAULT_RECHECK_NEW, RecheckReport, due_cells, prompt_clusters, recheck_cells
from router_core.recheck import (
    DEFAULT_CONFIRM_Z,
    DEFAULT_RECHECK_PROMPTS,
    DEFAULT_SUSPECT_MIN_COUNT,
    DEFAULT_SUSPECT_Z,
    suspect_cells,
)

#: USD a run of ``drift_rechecks`` may spend asking again, in all (``drift_rechecks.config.budget_usd``).
DEFAULT_RECHECK_BUDGET_USD = 1.0
#: The columns of a re-checked cell the asset's page shows.
SHOWN = ["llm", "cluster", "rated", "asked", "worse", "better", "stored_error", "new_error", "p_value", "changed"]


class DriftRecheckConfig(dg.Config):
    """Which cells of the online evaluation are suspect (``z`` above ``suspect_z`` over at least ``min_count`` rated
    requests), how many stored prompts of each are asked again (``per_cell``), after how many new rated requests a
    re-checked cell may be asked again (``recheck_new``), the USD cap of a run (``budget_usd``, never passed) and the
    sign test's threshold (``confirm_z``); ``whole_llm``: an LLM confirmed changed in one cluster is asked again in
    its other clusters too."""

    suspect_z: float = DEFAULT_SUSPECT_Z
    min_count: int = DEFAULT_SUSPECT_MIN_COUNT
    per_cell: int = DEFAULT_RECHECK_PROMPTS
    recheck_new: int = DEFAULT_RECHECK_NEW
    budget_usd: float = DEFAULT_RECHECK_BUDGET_USD
    confirm_z: float = DEFAULT_CONFIRM_Z
    whole_llm: bool = True


@dg.asset(group_name=GROUP, deps=[online_evaluation])
def drift_rechecks(
    context: dg.AssetExecutionContext,
    config: DriftRecheckConfig,
    warehouse: WarehouseResource,
    collector: CollectorResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Cells of the latest online evaluation whose traffic looks worse than predicted are confirmed, or not, by
    asking the LLM again up to ``per_cell`` of its stored prompts in that cluster (validation first) and comparing
    each new grade with the stored one (sign test). The new answers replace the stored ones, which are archived
    (``responses_archive``, reason ``drift re-check``); each cell is recorded in ``drift_rechecks``. A cell is asked
    again only after ``recheck_new`` more rated requests: re-running pays nothing twice."""
    with warehouse.connect() as con:
        cells = wh.read_online_evaluation(con)
        version = cells["router_version"][0] if cells.height else ""
        latest = wh.latest_rechecks(con, version)
    try:
        _check(config)
        suspects = suspect_cells(cells, config.suspect_z, config.min_count) if version else pl.DataFrame()
        due, notes = due_cells(suspects, latest, config.recheck_new) if suspects.height else (suspects, [])
    except ValueError as exc:  # RouterInputError too: a config value refused, named
        raise dg.Failure(f"drift_rechecks.config.{exc}") from None
    report = _recheck(context, config, warehouse, collector, mlflow, due, version) if due.height else RecheckReport()
    report.notes[:0] = notes
    if report.budget_message:
        context.log.warning(report.budget_message)
    return dg.MaterializeResult(metadata=_metadata(version, suspects, report, config.budget_usd))


def _check(config: DriftRecheckConfig) -> None:
    """Raise naming the first config value refused, before anything is asked (``suspect_z`` and ``min_count``:
    :func:`router_core.suspect_cells`)."""
    for name in ("per_cell", "recheck_new"):
        if (value := getattr(config, name)) < 1:
            raise ValueError(f"{name}={value!r}: must be >= 1")
    if not (math.isfinite(config.budget_usd) and config.budget_usd >= 0):
        raise ValueError(f"budget_usd={config.budget_usd!r}: must be a finite number >= 0")
    if not math.isfinite(config.confirm_z):
        raise ValueError(f"confirm_z={config.confirm_z!r}: must be a finite number")


def _recheck(
    context: dg.AssetExecutionContext,
    config: DriftRecheckConfig,
    warehouse: WarehouseResource,
    collector: CollectorResource,
    mlflow: MlflowResource,
    due: pl.DataFrame,
    version: str,
) -> RecheckReport:
    """Ask the ``due`` cells again under router ``version``'s cluster map (prompts in their heaviest cluster)."""
    from serving import registry

    mlflow.setup()
    router = registry.version_router(mlflow.model_name, version)
    embedder_id = registry.version_tags(mlflow.model_name, version)["embedder_id"]
    with contextlib.closing(collector.pacer()) as pacer:
        with warehouse.connect() as con:
            clusters = prompt_clusters(con, router, embedder_id)
            complete = catalog_completer(con, collector.policy(), pacer)  # a judge grades as in profiling
        return recheck_cells(
            warehouse.connect,
            due,
            clusters,
            version,
            config.budget_usd,
            complete,
            per_cell=config.per_cell,
            confirm_z=config.confirm_z,
            whole_llm=config.whole_llm,
            policy=collector.policy(),
            pacer=pacer,
            log=context.log.info,
        )


def _metadata(version: str, suspects: pl.DataFrame, report: RecheckReport, budget_usd: float) -> dict:
    cells = report.cells
    confirmed = cells.filter("changed") if cells.height else cells
    return {
        "router_version": version or "none: no online evaluation yet",
        "suspects": suspects.height,
        "rechecked_cells": cells.height,
        "confirmed": dg.MetadataValue.text("; ".join(confirmed["message"]) if confirmed.height else "none"),
        "confirmed_llms": sorted(set(confirmed["llm"])) if confirmed.height else [],
        "rechecked": markdown_table(cells.select([*SHOWN, "cost_usd", "message"]) if cells.height else cells),
        "prompts_planned": report.planned,
        "prompts_asked": report.asked,
        "prompts_failed": report.failed,
        "prompts_not_asked_budget": report.not_asked,
        "usd_spent": round(report.spent_usd, 6),
        "budget_usd": budget_usd,
        "budget": dg.MetadataValue.text(report.budget_message or "not reached"),
        "notes": dg.MetadataValue.text("; ".join(report.notes) or "none"),
    }
