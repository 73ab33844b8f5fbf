"""What the pipeline learns from traffic: the outcome of each rated routed request (feedback, else a judge's verdict
on sampled traffic), the online evaluation of the champion's traffic, and a check per LLM that its predicted error
holds on traffic."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import contextlib
import math

import dagster as dg
import polars as pl

import warehouse as wh
from assets import automation
from assets.decisions import GROUP, routing_decisions
from assets.metadata import markdown_image, markdown_table
from assets.profiling import llm_check_spec, llm_partitions
from assets.resources import CollectorResource, MlflowResource, WarehouseResource
from assets.traffic import traffic_feedback, traffic_samples
from profiling.collector import RetryPolicy
from profiling.completion import catalog_completer
from profiling.traffic_judging import TRAFFIC_RUBRIC, JudgingReport, judge_traffic
from router_core import RouterInputError
from router_core.online import (
    DEFAULT_MIN_COUNT,
    calibration,
    drift_alarms,
    quality_vs_cost,
    validation_count_table,
)
from router_core.online import (
    online_evaluation as evaluate,
)

#: The per-LLM check on traffic (of ``llm_traffic_evaluation``, one partition per LLM).
TRAFFIC_CHECK = "check_llm_traffic_evaluation_drift"
#: The asset that confirms a suspected drift by asking again (``assets.rechecks``, which imports this module).
RECHECKS = "drift_rechecks"
#: Where the online evaluation's figures go in the router version's MLflow run.
MLFLOW_FOLDER = "online_evaluation"


class OutcomesConfig(dg.Config):
    """The judge of sampled traffic: a catalog LLM (empty: no judging, outcomes come from feedback only), the share
    of stored samples it judges (picked by a hash of the request id, so every run picks the same), at most how many
    per run, and its USD/day cap: never passed, counting every run of the UTC day (``profiling.traffic_judging``)."""

    judge: str = ""
    judge_sample_rate: float = 1.0
    judge_max_per_run: int = 200
    judge_usd_per_day: float = 1.0
    judge_max_tokens: int = 512
    judge_rubric: str = TRAFFIC_RUBRIC  # reference-free: traffic has no reference answer


@dg.asset(group_name=GROUP, deps=[routing_decisions, traffic_feedback, traffic_samples])
def traffic_outcomes(
    config: OutcomesConfig, warehouse: WarehouseResource, collector: CollectorResource
) -> dg.MaterializeResult:
    """The outcome of each rated routed request (``warehouse.read_traffic_outcomes``): its latest feedback, else the
    configured judge's verdict on its sampled prompt and answer (stored in ``traffic_judgements``; both are kept). The
    judge's spend is recorded apart (``judge_spend``) and capped per UTC day; it holds no warehouse while it waits."""
    report = _judge(config, warehouse, collector) if config.judge else None
    with warehouse.connect() as con:
        outcomes = wh.read_traffic_outcomes(con)
        spent_today = wh.judge_spend_on(con)
    return dg.MaterializeResult(metadata={**_outcome_counts(outcomes), **_judge_metadata(config, report, spent_today)})


def _judge(config: OutcomesConfig, warehouse: WarehouseResource, collector: CollectorResource) -> JudgingReport:
    """Judge sampled traffic under the cap; one try per call (each try could be billed)."""
    policy = RetryPolicy(max_attempts=1, timeout_s=collector.timeout_s)
    with contextlib.closing(collector.pacer()) as pacer:
        with warehouse.connect() as con:
            complete = catalog_completer(con, policy, pacer)
        try:
            return judge_traffic(
                warehouse.connect,
                config.judge,
                complete,
                config.judge_usd_per_day,
                sample_rate=config.judge_sample_rate,
                max_per_run=config.judge_max_per_run,
                rubric=config.judge_rubric,
                max_tokens=config.judge_max_tokens,
            )
        except (ValueError, wh.WarehouseInputError) as exc:  # a judge not in the catalog, unpriced, a bad cap
            raise dg.Failure(f"traffic_outcomes.config: {exc}") from exc


def _outcome_counts(outcomes: pl.DataFrame) -> dict:
    both = outcomes.filter(pl.col("feedback_score").is_not_null() & pl.col("judge_score").is_not_null())
    per_version = outcomes.group_by("router_version").agg(
        pl.len().alias("rated"),
        (pl.col("source") == "feedback").sum().alias("feedback"),
        (pl.col("source") == "judge").sum().alias("judge"),
        pl.col("score").mean().alias("mean_score"),
    )
    return {
        "dagster/row_count": outcomes.height,
        "rated_by_feedback": int((outcomes["source"] == "feedback").sum()),
        "rated_by_judge_only": int((outcomes["source"] == "judge").sum()),
        "rated_by_both": both.height,
        "judge_feedback_mean_abs_gap": dg.FloatMetadataValue(
            float((both["feedback_score"] - both["judge_score"]).abs().mean()) if both.height else None
        ),
        "per_router_version": markdown_table(per_version.sort("router_version", nulls_last=True)),
    }


def _judge_metadata(config: OutcomesConfig, report: JudgingReport | None, spent_today: float) -> dict:
    if report is None:
        return {"judge": "none (judge not configured)", "judge_spent_today_usd": spent_today}
    return {
        "judge": config.judge,
        "judge_usd_per_day_cap": config.judge_usd_per_day,
        "judge_spent_today_usd": spent_today,
        "judge_spent_this_run_usd": report.spent_usd,
        "judge_calls": report.calls,
        "judge_verdicts_stored": report.judged,
        "judge_cached_verdicts": report.cached,
        "judge_failed": report.failed,
        "judge_stopped_by_cap": report.stopped_by_cap,
        "judge_candidates": report.candidates,
        "judge_selected": report.selected,
    }


class OnlineEvaluationConfig(dg.Config):
    """Which router version's traffic (empty: the champion's), and when a cell (LLM, cluster) alarms: observed error
    past predicted by more than ``z`` standard errors over at least ``min_count`` rated requests."""

    router_version: str = ""
    z: float = 3.0
    min_count: int = DEFAULT_MIN_COUNT
    log_to_mlflow: bool = True  # the figures also go to the version's MLflow run


@dg.asset(group_name=GROUP, deps=[traffic_outcomes], pool="duckdb")
def online_evaluation(
    context: dg.AssetExecutionContext,
    config: OnlineEvaluationConfig,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Observed vs predicted error of each LLM on the router version's rated traffic (``router_core.online``), per
    LLM and per cluster with counts and confidence intervals; calibration, quality vs cost and drift figures. Its
    cells are stored for each LLM's check (``llm_traffic_evaluation``)."""
    from serving import registry

    mlflow.setup()
    version = config.router_version or registry.champion_version(mlflow.model_name)
    if version is None:
        with warehouse.connect() as con:
            wh.replace_online_evaluation(con, "", _cells(pl.DataFrame(), config))
        return dg.MaterializeResult(metadata={"router_version": "none: no champion yet"})
    router = registry.version_router(mlflow.model_name, version)
    validation = validation_count_table(router.validation_assignments_, router.validation_errors_, router.llms_)
    with warehouse.connect() as con:
        decisions = wh.read_version_decisions(con, version)
        outcomes = wh.read_traffic_outcomes(con, version)
        try:
            evaluation = evaluate(decisions, outcomes, validation)
        except RouterInputError as exc:  # e.g. decisions of one version disagreeing on the number of clusters
            raise dg.Failure(f"online_evaluation: router version {version}: {exc}") from exc
        cells = _cells(evaluation.by_cluster, config)
        wh.replace_online_evaluation(con, version, cells)
    figures = _figures(decisions, outcomes, evaluation.by_cluster, config)
    run_id = None
    if config.log_to_mlflow and figures:
        run_id = registry.log_version_figures(mlflow.model_name, version, figures, MLFLOW_FOLDER)
    alarms = cells.filter("alarm")
    for message in alarms["message"]:
        context.log.warning(message)
    return dg.MaterializeResult(
        metadata={
            "router_version": version,
            "decisions": decisions.height,
            "rated_requests": outcomes.height,
            "alarms": dg.MetadataValue.text("; ".join(alarms["message"]) or "none"),
            "by_llm": markdown_table(evaluation.by_llm),
            "by_cluster": markdown_table(evaluation.by_cluster),
            "mlflow_run_id": run_id or "not logged",
            **_images(figures),
        }
    )


def _cells(by_cluster: pl.DataFrame, config: OnlineEvaluationConfig) -> pl.DataFrame:
    """The ``by_cluster`` rows with each cell's one-line message and whether it alarms (``drift_alarms``)."""
    schema = {"llm": pl.String, "cluster": pl.Int64, "message": pl.String, "alarm": pl.Boolean}
    if by_cluster.height == 0:
        return pl.DataFrame(schema={**schema, "count": pl.Int64})
    described = drift_alarms(by_cluster, z=-math.inf, min_count=0).select("llm", "cluster", "message")
    alarming = drift_alarms(by_cluster, z=config.z, min_count=config.min_count).select("llm", "cluster")
    return (
        by_cluster.join(described, on=["llm", "cluster"], how="left")
        .join(alarming.with_columns(alarm=pl.lit(True)), on=["llm", "cluster"], how="left")
        .with_columns(pl.col("alarm").fill_null(False), pl.col("message").fill_null(""))
    )


def _figures(
    decisions: pl.DataFrame, outcomes: pl.DataFrame, by_cluster: pl.DataFrame, config: OnlineEvaluationConfig
) -> dict:
    """The reliability, quality-vs-cost and drift figures (none without rated traffic)."""
    if outcomes.height == 0:
        return {}
    from router_core.plots import plot_drift_heatmap, plot_quality_vs_cost, plot_reliability

    return {
        "reliability.png": plot_reliability(calibration(decisions, outcomes)),
        "quality_vs_cost.png": plot_quality_vs_cost(quality_vs_cost(decisions, outcomes)),
        "drift_heatmap.png": plot_drift_heatmap(by_cluster, config.min_count, config.z),
    }


def _images(figures: dict) -> dict[str, dg.MetadataValue]:
    """The figures as Markdown images (then closed)."""
    from matplotlib import pyplot as plt

    images = {name.removesuffix(".png"): markdown_image(figure, name) for name, figure in figures.items()}
    for figure in figures.values():
        plt.close(figure)
    return images


TRAFFIC_SPEC = llm_check_spec(
    TRAFFIC_CHECK,
    "llm_traffic_evaluation",
    "On the champion's rated traffic (online_evaluation): clusters where the LLM's observed error "
    "exceeds its predicted error by more than z (default 3) standard errors warn; a cluster where asking the LLM "
    "again confirmed it got worse (drift_rechecks) fails (ERROR). Names the LLM, the cluster and the counts.",
)


@dg.asset(
    group_name=GROUP,
    partitions_def=llm_partitions,
    deps=[online_evaluation, dg.AssetKey(RECHECKS)],
    automation_condition=automation.TRAFFIC,
    check_specs=[TRAFFIC_SPEC],
)
def llm_traffic_evaluation(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """One LLM's cells of the latest online evaluation (per cluster: rated requests, observed vs predicted error,
    z); its check warns when one of them alarms, and fails when asking again confirmed a change in one."""
    llm = context.partition_key
    with warehouse.connect() as con:
        cells = wh.read_online_evaluation(con, [llm])
        version = cells["router_version"][0] if cells.height else "none"
        confirmed = wh.latest_rechecks(con, version, [llm]).filter("changed")
    alarms = cells.filter("alarm")
    rated = int(cells["count"].sum()) if cells.height else 0
    unconfirmed = alarms.filter(~pl.col("cluster").is_in(confirmed["cluster"].to_list()))["message"].to_list()
    summary = "; ".join(_confirmed_messages(confirmed, cells) + unconfirmed) or (
        f"{llm}: observed error on traffic within its prediction in every cluster ({rated} rated requests)"
        if rated
        else f"{llm}: no rated traffic in the latest online evaluation"
    )
    table = markdown_table(cells.drop("router_version", "evaluated_at", "message"))
    check = dg.AssetCheckResult(
        check_name=TRAFFIC_CHECK,
        passed=alarms.height == 0 and confirmed.height == 0,
        severity=dg.AssetCheckSeverity.ERROR if confirmed.height else dg.AssetCheckSeverity.WARN,
        description=summary,
        metadata={
            "llm": llm,
            "router_version": version,
            "alarming_clusters": alarms["cluster"].to_list(),
            "confirmed_clusters": confirmed["cluster"].to_list(),
        },
    )
    metadata = {"router_version": version, "rated_requests": rated, "summary": summary, "clusters": table}
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _confirmed_messages(confirmed: pl.DataFrame, cells: pl.DataFrame) -> list[str]:
    """One line per confirmed cell: the re-check's counts, then what traffic showed there."""
    traffic = dict(zip(cells["cluster"], cells["message"], strict=True))
    return [
        f"confirmed by asking again: {row['message']}; traffic: {traffic.get(row['cluster'], 'no rated requests now')}"
        for row in confirmed.iter_rows(named=True)
    ]
