"""Profiling assets: the LLM catalog, the prompt set, and each LLM's responses and grades (one partition per LLM)."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.

import contextlib
import hashlib
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import dagster as dg
import duckdb
import polars as pl

import warehouse as wh
from assets.expectations import (
    GRADE_PROPERTIES,
    RESPONSE_PROPERTIES,
    PropertyOutcome,
    all_blocking_passed,
    check_grades,
    check_responses,
    import_checks,
)
from assets.profiling_config import (
    CatalogConfig,
    GradingConfig,
    ProfilingConfig,
    PromptSetConfig,
    ResultsConfig,
)
from assets.resources import CollectorResource, EmbedderResource, WarehouseResource
from profiling.budget import SpendLimit
from profiling.collector import CollectionReport
from profiling.completion import catalog_completer
from profiling.datasets import detect_adapter, import_dataset
from profiling.grading import grade_responses_report
from profiling.importers import import_results
from profiling.onboarding import CostEstimate, plan_onboarding
from profiling.staging import collect_to_staging, merge_staging, plan_run, settle_budget_stops

GROUP = "profiling"
#: One partition per catalog LLM; the onboarding sensor adds them.
llm_partitions = dg.DynamicPartitionsDefinition(name="llm")


#: The warehouse's record of each LLM's blocking checks, one row per LLM and asset, which features and routers
#: read (an LLM whose record fails is left out); the names predate the per-property checks and are kept so that
#: a warehouse's earlier rows are overwritten, never left behind.
WAREHOUSE_RECORD = {"llm_responses": "check_llm_responses_valid", "graded_responses": "check_graded_responses_valid"}

CHECK_DESCRIPTIONS = {
    "schema": "Columns and their types as the pipeline reads them; one row per prompt.",
    "coverage": "Share of the validation prompts answered, against a floor (default 98%, run config coverage_floor).",
    "empty_responses": "At most 1% of collected answers without text.",
    "token_counts": "Every collected answer reports prompt and completion tokens > 0 (its cost is priced from them).",
    "score_range": "Every validation answer has a score, in [0, 1].",
}


def llm_check_spec(name: str, asset: str, description: str, blocking: bool = False) -> dg.AssetCheckSpec:
    """A check of ``asset`` per LLM partition (a Dagster preview, its warning silenced: the UI shows each LLM's own
    status)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, blocking=blocking, partitions_def=llm_partitions, description=description
        )


def check_specs(asset: str, properties: dict[str, bool]) -> list[dg.AssetCheckSpec]:
    """One check per property of ``asset``, per LLM partition; blocking ones (ERROR) stop grading, features and
    routers for that LLM, the others warn."""
    return [
        llm_check_spec(
            f"check_{asset}_{prop}",
            asset,
            CHECK_DESCRIPTIONS[prop] + (" Blocks (ERROR)." if blocking else " Warns."),
            blocking,
        )
        for prop, blocking in properties.items()
    ]


def _check_results(
    con: duckdb.DuckDBPyConnection, model: str, asset: str, outcomes: dict[str, PropertyOutcome]
) -> list[dg.AssetCheckResult]:
    """Record whether the blocking checks pass in the warehouse (routers skip failing LLMs) and report each
    property to Dagster, naming the LLM."""
    failed = {
        f"check_{asset}_{o.prop}": {"message": o.message, "failures": o.failures}
        for o in outcomes.values()
        if o.blocking and not o.passed
    }
    wh.record_check(con, model, WAREHOUSE_RECORD[asset], all_blocking_passed(outcomes), json.dumps(failed, default=str))
    return [
        dg.AssetCheckResult(
            check_name=f"check_{asset}_{o.prop}",
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            description=f"{model}: {o.message}",
            metadata={
                "llm": model,
                "summary": o.message,
                **o.numbers,
                **({"failed_expectations": dg.MetadataValue.json(o.failures)} if o.failures else {}),
            },
        )
        for o in outcomes.values()
    ]


def _register_partitions(context: dg.AssetExecutionContext, names: list[str]) -> list[str]:
    """Give each LLM its partition, so ``dagster asset materialize --partition NAME`` works without the sensor."""
    new = sorted(set(names) - set(context.instance.get_dynamic_partitions(llm_partitions.name)))
    for name in new:  # a partition is a directory of Dagster's storage: only ever from a checked name
        wh.check_llm_name(name)
    if new:
        context.instance.add_dynamic_partitions(llm_partitions.name, new)
    return new


# A profiling run's warehouse steps (catalog sync, plan, merge, grades) are short, and many runs take them at once:
# they wait on the file's own lock (WarehouseResource.lock_wait_s, retried every <= 100 ms) rather than in the
# "duckdb" pool, whose claims a blocked run polls 1 s apart and slower the longer it waits (a hand-off would cost
# more than the step). Long writers (embeddings, cluster map, features, router) stay in the pool.


def endpoint_fingerprint(entry: Mapping) -> str:
    """What makes an LLM's answers comparable: its catalog entry's endpoint and model id (prices and concurrency
    do not)."""
    return hashlib.sha256(json.dumps([entry["base_url"], entry["model_id"]]).encode()).hexdigest()[:12]


#: Each LLM's endpoint and model id, as the catalog names them: an external asset (the user edits the file) that
#: ``llm_catalog`` observes, one data version per LLM partition (:func:`endpoint_fingerprint`). An LLM's responses
#: depend on its own entry here, so a re-pointed LLM shows "Unsynced" and the others stay in sync.
llm_endpoint = dg.AssetSpec(
    "llm_endpoint",
    group_name=GROUP,
    partitions_def=llm_partitions,
    description="Each LLM's endpoint and model id in the catalog (observed by llm_catalog; prices do not count).",
)

#: The tag that carries an event's data version (Dagster's ``DATA_VERSION_TAG``, kept stable for its event logs).
DATA_VERSION_TAG = "dagster/data_version"

#: ``llm_catalog``'s code version: its own data version follows it, not the file's content, which reaches each
#: LLM's responses through its ``llm_endpoint`` partition. Otherwise every sync, e.g. a new LLM's profiling run,
#: would leave every other LLM's responses "Unsynced". Bump it when a change of the sync concerns every LLM.
CATALOG_CODE_VERSION = "1"


@dg.asset(group_name=GROUP, code_version=CATALOG_CODE_VERSION)
def llm_catalog(
    context: dg.AssetExecutionContext, config: CatalogConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The catalog of LLMs (endpoint, prices, concurrency), validated from ``llms.yaml``; each active LLM has a
    partition of the per-LLM assets, and an observation of its ``llm_endpoint``."""
    with warehouse.connect() as con:
        catalog = wh.sync_catalog(con, config.path or warehouse.catalog())
    active = catalog.filter("active")
    new = _register_partitions(context, active["name"].to_list())
    for entry in active.iter_rows(named=True):
        version = {DATA_VERSION_TAG: endpoint_fingerprint(entry)}
        context.log_event(dg.AssetObservation(llm_endpoint.key, partition=entry["name"], tags=version))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": catalog.height,
            "active": active.height,
            "import_only": int(catalog["base_url"].is_null().sum()),
            "names": catalog["name"].to_list(),
            "partitions_added": new,
        }
    )


@dg.asset(group_name=GROUP, pool="duckdb")
def prompt_set(config: PromptSetConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Prompts of a dataset, rendered for the LLMs by its spec and split train / validation / test (a stored
    prompt keeps its split)."""
    dataset = config.dataset_name()
    if config.path:
        settings = {**(config.spec or {}), "seed": config.seed, "shares": config.shares}
        with warehouse.connect() as con:
            prompts = import_dataset(
                con,
                config.path,
                dataset,
                config.adapter or detect_adapter(config.path),
                sample=config.sample,
                **settings,
            )
    else:  # a dataset registered earlier: only read
        try:
            with warehouse.connect_read_only() as con:
                prompts = wh.read_prompts(con, dataset=dataset)
        except FileNotFoundError as exc:
            raise dg.Failure(f"prompt_set.config.dataset={dataset!r}: {exc} (uniroute import-prompts)") from None
        if prompts.height == 0:
            raise dg.Failure(f"prompt_set.config.dataset={dataset!r}: no such dataset (uniroute import-prompts)")
    counts = dict(prompts["split"].value_counts().iter_rows())
    return dg.MaterializeResult(
        metadata={
            "dataset": dataset,
            "dagster/row_count": prompts.height,
            **{f"{k} prompts": v for k, v in sorted(counts.items())},
        }
    )


@dg.asset(group_name=GROUP, deps=[llm_catalog], pool="duckdb")
def imported_results(
    context: dg.AssetExecutionContext, config: ResultsConfig, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """Evaluation results users already have, as imported answers and grades with their per-query costs; their
    LLMs join the catalog as import-only entries and count as profiled (nothing asks them again)."""
    with warehouse.connect() as con:
        report = import_results(
            con,
            config.path,
            config.dataset,
            config.format,
            config.model,
            config.score_field,
            config.catalog or warehouse.catalog(),
            models=config.models,
            exclude_models=config.exclude_models or (),
            rename=config.rename,
            price_file=config.price_file,
            replace=config.replace,
            embedder=embedder.model,  # its tokenizer estimates tokens the table lacks
        )
    _register_partitions(context, report.models)
    return dg.MaterializeResult(
        metadata={
            "dataset": report.dataset,
            "models": report.models,
            "answers_stored": report.answers_stored,
            "already_stored_unchanged": report.already_stored,
            "stored_differing_from_file": report.differing,
            "replaced": report.replaced,
            "tokens_estimated": report.tokens_estimated,
            "grades_written": report.grades_written,
            "with_per_query_cost": report.with_cost,
            "prompts_added": report.prompts_added,
            "added_to_catalog": report.models_added_to_catalog,
        }
    )


@dataclass(frozen=True)
class CollectionPlan:
    """What one LLM's profiling run asks: its catalog row, the pairs no stored or staged answer covers (a new LLM:
    the first ``onboarding.fraction`` of its validation prompts), its cost estimate and its budget."""

    llms: pl.DataFrame
    pairs: pl.DataFrame
    estimate: CostEstimate
    budget: SpendLimit | None


@dg.op(ins={name: dg.In(dg.Nothing) for name in ("llm_catalog", "llm_endpoint", "prompt_set")})
def plan_responses(
    context: dg.OpExecutionContext, config: ProfilingConfig, warehouse: WarehouseResource
) -> CollectionPlan:
    """Archive the answers a re-profiling replaces, then list the pairs to ask: pending in the warehouse and not
    answered in unmerged staging (a killed or concurrent run's answers are never asked again); a new LLM only the
    first ``onboarding.fraction`` of its validation prompts. Short writes: the staged files are read without the
    warehouse."""
    model = context.partition_key
    llms, pairs = plan_run(
        warehouse.connect, [model], config.splits, warehouse.staging(), config.refresh_time(), context.log.info
    )
    onboarding = config.onboarding
    try:
        plan = plan_onboarding(
            warehouse.connect, llms, pairs, onboarding.fraction, onboarding.budget_usd, context.log.info
        )
    except ValueError as exc:
        raise dg.Failure(f"llm_responses.config.{exc}") from None
    estimate = plan.estimates[model]
    context.log.info(f"{model}: {plan.pairs.height} prompts to ask on {config.splits}; estimate {estimate.line()}")
    return CollectionPlan(llms, plan.pairs, estimate, plan.budget)


#: Seconds between a profiling run's progress lines (each is an event in the run's log).
PROGRESS_EVERY_S = 5.0


def _at_most_every(
    seconds: float, log: Callable[[str], None], clock: Callable[[], float] = time.monotonic
) -> Callable[[str], None]:
    """``log``, dropping lines that come less than ``seconds`` (of ``clock``) after the last one passed on."""
    last = -float("inf")

    def maybe_log(message: str) -> None:
        nonlocal last
        if (now := clock()) - last >= seconds:
            last = now
            log(message)

    return maybe_log


@dg.op
def stage_responses(
    context: dg.OpExecutionContext, plan: CollectionPlan, warehouse: WarehouseResource, collector: CollectorResource
) -> CollectionReport:
    """Ask the planned pairs and stage the answers in durable files as they arrive, outside the warehouse (no
    connection to it), so the runs of many LLMs wait on their endpoints at once. Request starts are paced per
    endpoint across runs (``CollectorResource.pacing_path``). The checks' library is imported meanwhile."""
    checks_library = threading.Thread(target=import_checks, name="uniroute-import-checks", daemon=True)
    checks_library.start()
    with contextlib.closing(collector.pacer()) as pacer:
        report = collect_to_staging(
            plan.pairs,
            plan.llms,
            warehouse.staging(),
            run_id=f"dagster-{context.run_id}",
            policy=collector.policy(),
            batch_size=collector.batch_size,
            flush_interval_s=collector.flush_interval_s,
            progress=False,
            log_progress=_at_most_every(PROGRESS_EVERY_S, context.log.info),
            pacer=pacer,
            budget=plan.budget,
        )
    checks_library.join()
    return report


RESPONSE_CHECKS = [f"check_llm_responses_{prop}" for prop in RESPONSE_PROPERTIES]


@dg.op(
    out={"result": dg.Out(dg.Nothing), **{name: dg.Out(dg.Nothing, is_required=False) for name in RESPONSE_CHECKS}},
)
def merge_responses(
    context: dg.OpExecutionContext,
    config: ProfilingConfig,
    report: CollectionReport,
    warehouse: WarehouseResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Merge the LLM's staged files (this run's and any a killed run left) into the warehouse idempotently, then
    check its answers. Short writes: the staged files are read, and moved aside, without the warehouse."""
    model = context.partition_key
    merged = merge_staging(warehouse.connect, warehouse.staging(), [model], log_progress=context.log.info)
    settle_budget_stops(warehouse.connect, report)
    for message in report.budget_messages:
        context.log.warning(message)
    with warehouse.connect() as con:
        n_validation = wh.profile_target(con, model)
        profile = wh.read_profiles(con, [model]).row(0, named=True)
        responses = wh.read_responses(con, [model], ["validation"])
        rows = wh.count_answers(con, model)["responses"]
        checks = _check_results(
            con, model, "llm_responses", check_responses(responses, n_validation, config.coverage_floor)
        )
    if report.failed:
        context.log.warning(f"{model}: {report.failed} of {report.requested} prompts failed; see collection_failures")
    yield dg.Output(
        None,
        "result",
        metadata={
            "dagster/row_count": rows,
            "validation_coverage": responses.height / max(n_validation, 1),
            "requested": report.requested,
            "stored": merged.answers_stored,
            "failed": report.failed,
            "attempts": report.attempts,
            "cost_usd": report.cost_usd,
            "seconds": report.seconds,
            "errors": dict(report.errors),
            "staged_files_merged": merged.files,
            "profile": f"{profile['answered']} of {profile['total']} validation prompts"
            + (" (partial)" if profile["partial"] else ""),
            "onboarding_usd": round(profile["onboarding_usd"], 6),
            "not_asked_budget": sum(report.not_asked.values()),
            **({"budget": dg.MetadataValue.text(" ".join(report.budget_messages))} if report.budget_messages else {}),
        },
    )
    yield from checks


@dg.config_mapping
def _profiling_config(config: ProfilingConfig) -> dict:
    """``llm_responses.config`` (one :class:`ProfilingConfig`) for the ops that read it."""
    settings = {"config": config.model_dump()}
    return {"plan_responses": settings, "merge_responses": settings}


@dg.graph_asset(
    group_name=GROUP,
    partitions_def=llm_partitions,
    ins={name: dg.AssetIn(dagster_type=dg.Nothing) for name in ("llm_catalog", "llm_endpoint", "prompt_set")},
    config=_profiling_config,
    check_specs=check_specs("llm_responses", RESPONSE_PROPERTIES),
)
def llm_responses(llm_catalog, llm_endpoint, prompt_set) -> dict:
    """One LLM's answers to its prompts; only pairs not stored (nor staged) yet are asked. Three steps: plan and
    merge are short writes; the asking in between holds no warehouse, so the profiling runs of several LLMs
    overlap. "Unsynced" after new prompts or a change of its own catalog entry (``llm_endpoint``)."""
    plan = plan_responses(llm_catalog=llm_catalog, llm_endpoint=llm_endpoint, prompt_set=prompt_set)
    merged = merge_responses(stage_responses(plan))
    return {"result": merged.result, **{f"llm_responses_{name}": getattr(merged, name) for name in RESPONSE_CHECKS}}


@dg.asset(
    group_name=GROUP,
    partitions_def=llm_partitions,
    deps=[llm_responses],
    check_specs=check_specs("graded_responses", GRADE_PROPERTIES),
)
def graded_responses(
    context: dg.AssetExecutionContext,
    config: GradingConfig,
    warehouse: WarehouseResource,
    collector: CollectorResource,
) -> dg.MaterializeResult:
    """One LLM's grades, from each prompt's grader (an LLM judge is asked through the catalog; its verdicts are
    cached); its validation accuracy in the metadata. Imported scores are kept as they are."""
    model = context.partition_key
    with contextlib.closing(collector.pacer()) as pacer:  # a judge shares the pace
        with warehouse.connect() as con:
            complete = catalog_completer(con, collector.policy(), pacer)
        grading = grade_responses_report(warehouse.connect, [model], complete)  # not held while graders work
    with warehouse.connect() as con:
        outcomes = wh.read_outcomes(con, [model], ["validation"])
        n_validation = wh.profile_target(con, model)
        rows = wh.count_answers(con, model)["grades"]
        checks = _check_results(
            con, model, "graded_responses", check_grades(outcomes, n_validation, config.coverage_floor)
        )
    if grading.failed:
        context.log.warning(f"{model}: {grading.failed} answers not graded (retried next run): {grading.examples}")
    accuracy = float(outcomes["score"].mean()) if outcomes.height else None
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "validation_coverage": outcomes.height / max(n_validation, 1),
            "graded_now": grading.written,
            "ungraded_will_retry": grading.failed,
            "judge_cost_usd": grading.judge_cost_usd,
            "validation_accuracy": accuracy,
        },
        check_results=checks,
    )
