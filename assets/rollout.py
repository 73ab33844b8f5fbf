"""Rolling out a new router: the champion vs the challenger on the same traffic (``rollout_report``), and the evidence
the rollout sensor (``pipelines/sensors.py``) promotes or rolls back on. The SQL is in ``warehouse/rollout.py``, the
statistics and rules in ``router_core/rollout.py``; the aliases move through ``serving/alias_moves.py``."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
from dataclasses import dataclass

import dagster as dg
import duckdb
import polars as pl

import warehouse as wh
from assets.decisions import GROUP, routing_decisions
from assets.metadata import markdown_image, markdown_table
from assets.outcomes import traffic_outcomes
from assets.resources import MlflowResource, RolloutResource, WarehouseResource
from router_core import RolloutDecision, RouterInputError, rollout_comparison, rollout_decision

#: Where the report's figure goes in the MLflow run of the challenger's version (the champion's without one).
MLFLOW_FOLDER = "rollout"
#: How long a read waits while another process writes the warehouse (a sensor tick must not hang).
READ_WAIT_S = 10.0


@dataclass(frozen=True)
class RolloutEvidence:
    """The versions the aliases point at, the decisions since the champion became champion, the traffic outcomes,
    and what the rules decide on them."""

    champion: str
    challenger: str | None
    previous: str | None
    decisions: pl.DataFrame
    outcomes: pl.DataFrame
    decision: RolloutDecision


class RolloutUnavailable(Exception):
    """No evidence to judge a rollout on (no champion, a warehouse busy or not migrated): the message says why."""


def rollout_evidence(warehouse: WarehouseResource, mlflow: MlflowResource, rollout: RolloutResource) -> RolloutEvidence:
    """The aliases of ``mlflow.model_name``, the decisions of their versions since ``champion`` last moved (all,
    when no move was recorded), every traffic outcome, and :func:`router_core.rollout_decision` on them."""
    from serving import alias_moves

    mlflow.setup()
    name = mlflow.model_name
    champion = alias_moves.alias_version(name, alias_moves.CHAMPION)
    if champion is None:
        raise RolloutUnavailable(f"{name} has no champion yet")
    challenger = alias_moves.alias_version(name, alias_moves.CHALLENGER)
    previous = alias_moves.alias_version(name, alias_moves.PREVIOUS_CHAMPION)
    since = alias_moves.last_moved_at(name, alias_moves.CHAMPION)
    versions = [v for v in (champion, challenger) if v is not None]
    try:
        with warehouse.connect_read_only(READ_WAIT_S) as con:
            decisions = wh.read_rollout_decisions(con, versions, since)
            outcomes = wh.read_traffic_outcomes(con)
    except (duckdb.Error, wh.SchemaError, OSError) as exc:
        raise RolloutUnavailable(f"warehouse {warehouse.database()}: {str(exc).splitlines()[0]}") from exc
    try:
        decided = rollout_decision(decisions, outcomes, champion, challenger, previous, rollout.rules())
    except RouterInputError as exc:  # a bad rule in the resource's config
        raise RolloutUnavailable(f"rollout resource: {exc}") from exc
    return RolloutEvidence(champion, challenger, previous, decisions, outcomes, decided)


@dg.asset(group_name=GROUP, deps=[routing_decisions, traffic_outcomes])
def rollout_report(
    warehouse: WarehouseResource, mlflow: MlflowResource, rollout: RolloutResource
) -> dg.MaterializeResult:
    """The champion vs the challenger on the same traffic since the champion last moved: agreement rate, each
    version's predicted error and cost on the shadowed requests, observed error, upstream error rate and cost per
    request of the requests each served, each with its confidence interval (``router_core.rollout``); what the
    rollout sensor's rules decide on it; the figure here and in the MLflow run of the challenger's version."""
    try:
        evidence = rollout_evidence(warehouse, mlflow, rollout)
    except RolloutUnavailable as exc:
        return dg.MaterializeResult(metadata={"verdict": "none", "reason": str(exc)})
    table = rollout_comparison(
        evidence.decisions, evidence.outcomes, evidence.champion, evidence.challenger, rollout.rules().confidence
    )
    figure = _figure(table)
    run_id = _log_figure(mlflow, evidence.challenger or evidence.champion, figure)
    image = markdown_image(figure, "rollout.png")
    return dg.MaterializeResult(
        metadata={
            "champion": evidence.champion,
            "challenger": evidence.challenger or "none",
            "previous_champion": evidence.previous or "none",
            "decisions": evidence.decisions.height,
            "verdict": evidence.decision.action,
            "reason": evidence.decision.reason,
            "comparison": markdown_table(table),
            "mlflow_run_id": run_id,
            "rollout": image,
        }
    )


def _figure(table: pl.DataFrame):
    """The comparison's figure (closed for pyplot: only this report holds it)."""
    from matplotlib import pyplot as plt

    from router_core.plots import plot_rollout

    figure = plot_rollout(table)
    plt.close(figure)
    return figure


def _log_figure(mlflow: MlflowResource, version: str, figure) -> str:
    """Log the figure under ``rollout/`` of ``version``'s run; returns the run id."""
    from serving import registry

    return registry.log_version_figures(mlflow.model_name, version, {"rollout.png": figure}, MLFLOW_FOLDER)
