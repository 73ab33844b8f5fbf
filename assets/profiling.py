"""Profiling assets: the LLM catalog, the prompt set, and each LLM's responses and grades (one partition per LLM)."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.

import os
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb

import warehouse as wh
from assets.expectations import COVERAGE_FLOOR, CheckOutcome, check_grades, check_responses
from assets.resources import CollectorResource, WarehouseResource
from profiling.collector import catalog_completer, collect
from profiling.datasets import detect_adapter, import_dataset
from profiling.grading import grade_responses_report
from profiling.importers import import_results

GROUP = "profiling"
#: One partition per catalog LLM; the onboarding sensor adds them.
llm_partitions = dg.DynamicPartitionsDefinition(name="llm")


def default_catalog_path() -> str:
    """``$UNIROUTE_CATALOG``, else ``llms.yaml`` in the working directory."""
    return os.environ.get("UNIROUTE_CATALOG", "llms.yaml")


class CatalogConfig(dg.Config):
    """Where the user-edited catalog lives (default :func:`default_catalog_path`)."""

    path: str = ""


class PromptSetConfig(dg.Config):
    """The dataset: imported from ``path`` (any adapter's layout) when given, else one already registered by
    ``uniroute import-prompts``, which is then only summarised."""

    path: str = ""
    dataset: str = ""  # default: the adapter's name for a directory (e.g. mmlu_pro), the file's stem for a file
    adapter: str = ""  # default: mmlu_pro for a directory holding questions.parquet, else prompts (a prompt file)
    spec: dict | None = None  # DatasetSpec settings over the adapter's (template, max_tokens, router_text, ...)
    seed: int | None = None  # of the assigned splits (stratified by category); stored splits never move
    sample: int | None = None  # a stratified sample of about N prompts; None: all
    shares: dict[str, float] | None = None  # e.g. {"train": 0.6, "validation": 0.1, "test": 0.3} (the default)

    def dataset_name(self) -> str:
        if self.dataset:
            return self.dataset
        if not self.path:
            raise dg.Failure("prompt_set.config: give a path to import, or the dataset of an earlier import")
        path = Path(self.path)
        return detect_adapter(path) if path.is_dir() else path.stem


class ResultsConfig(dg.Config):
    """An evaluation table to import (``uniroute import-results``): long, wide (RouterBench) or lm-eval samples."""

    path: str
    dataset: str
    format: str = "auto"
    model: str | None = None  # lm-eval samples without a results_*.json beside them
    score_field: str | None = None
    catalog: str = ""  # where new LLMs are appended as import-only entries; default the catalog's path


class ProfilingConfig(dg.Config):
    """Which prompt splits an LLM answers, and the coverage floor of its data checks."""

    # validation: every LLM; test: the evaluation pool (routers are scored there); add "train" for training LLMs
    splits: list[str] = ["validation", "test"]  # noqa: RUF012 - pydantic copies field defaults
    coverage_floor: float = COVERAGE_FLOOR
    # Re-profile: answers collected before this UTC time (ISO 8601) are archived and asked again, and the
    # features' drift check compares the two profiles. A re-run with the same value asks nothing twice.
    refresh_before: str | None = None

    def refresh_time(self) -> datetime | None:
        if self.refresh_before is None:
            return None
        try:
            return datetime.fromisoformat(self.refresh_before)  # naive: UTC
        except ValueError:
            raise dg.Failure(f"llm_responses.config.refresh_before={self.refresh_before!r}: not ISO 8601") from None


class GradingConfig(dg.Config):
    """The coverage floor of the grades' data check."""

    coverage_floor: float = COVERAGE_FLOOR


def _check_result(
    con: duckdb.DuckDBPyConnection, model: str, name: str, outcome: CheckOutcome, rows: int, n_validation: int
) -> dg.AssetCheckResult:
    """Record the outcome in the warehouse (routers skip failing LLMs) and report it to Dagster."""
    wh.record_check(con, model, name, outcome.passed, outcome.details())
    return dg.AssetCheckResult(
        check_name=name,
        passed=outcome.passed,
        metadata={"coverage": rows / max(n_validation, 1), "failed_expectations": outcome.details()},
    )


def _register_partitions(context: dg.AssetExecutionContext, names: list[str]) -> list[str]:
    """Give each LLM its partition, so ``dagster asset materialize --partition NAME`` works without the sensor."""
    new = sorted(set(names) - set(context.instance.get_dynamic_partitions(llm_partitions.name)))
    if new:
        context.instance.add_dynamic_partitions(llm_partitions.name, new)
    return new


@dg.asset(group_name=GROUP, pool="duckdb")
def llm_catalog(
    context: dg.AssetExecutionContext, config: CatalogConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The catalog of LLMs (endpoint, prices, concurrency), validated from ``llms.yaml``; each active LLM has a
    partition of the per-LLM assets."""
    with warehouse.connect() as con:
        catalog = wh.sync_catalog(con, config.path or default_catalog_path())
    new = _register_partitions(context, catalog.filter("active")["name"].to_list())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": catalog.height,
            "active": int(catalog["active"].sum()),
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
    with warehouse.connect() as con:
        if config.path:
            settings = {**(config.spec or {}), "seed": config.seed, "shares": config.shares}
            prompts = import_dataset(
                con,
                config.path,
                dataset,
                config.adapter or detect_adapter(config.path),
                sample=config.sample,
                **settings,
            )
        else:
            prompts = wh.read_prompts(con, dataset=dataset)
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
    context: dg.AssetExecutionContext, config: ResultsConfig, warehouse: WarehouseResource
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
            config.catalog or default_catalog_path(),
        )
    _register_partitions(context, report.models)
    return dg.MaterializeResult(
        metadata={
            "dataset": report.dataset,
            "models": report.models,
            "answers_stored": report.answers_stored,
            "grades_written": report.grades_written,
            "with_per_query_cost": report.with_cost,
            "prompts_added": report.prompts_added,
            "added_to_catalog": report.models_added_to_catalog,
        }
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=llm_partitions,
    deps=[llm_catalog, prompt_set],
    pool="duckdb",
    check_specs=[
        dg.AssetCheckSpec(
            "check_llm_responses_valid",
            asset="llm_responses",
            blocking=True,
            description="Great Expectations: schema and types, one row per prompt, validation coverage, "
            "no empty responses, token counts > 0. Failing blocks grading, features and routers.",
        )
    ],
)
def llm_responses(
    context: dg.AssetExecutionContext,
    config: ProfilingConfig,
    warehouse: WarehouseResource,
    collector: CollectorResource,
) -> dg.MaterializeResult:
    """One LLM's answers to its prompts; only pairs not stored yet are asked."""
    model = context.partition_key
    with warehouse.connect() as con:
        report = collect(
            con,
            [model],
            config.splits,
            collector.policy(),
            collector.batch_size,
            progress=False,
            log_progress=context.log.info,
            refresh_before=config.refresh_time(),
        )
        n_validation = wh.expected_count(con, model, ["validation"])
        responses = wh.read_responses(con, [model], ["validation"])
        rows = wh.count_answers(con, model)["responses"]
        check = _check_result(
            con,
            model,
            "check_llm_responses_valid",
            check_responses(responses, n_validation, config.coverage_floor),
            responses.height,
            n_validation,
        )
    if report.failed:
        context.log.warning(f"{model}: {report.failed} of {report.requested} prompts failed; see collection_failures")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "validation_coverage": responses.height / max(n_validation, 1),
            "requested": report.requested,
            "stored": report.stored,
            "failed": report.failed,
            "attempts": report.attempts,
            "cost_usd": report.cost_usd,
            "seconds": report.seconds,
            "errors": dict(report.errors),
        },
        check_results=[check],
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=llm_partitions,
    deps=[llm_responses],
    pool="duckdb",
    check_specs=[
        dg.AssetCheckSpec(
            "check_graded_responses_valid",
            asset="graded_responses",
            blocking=True,
            description="Great Expectations: one row per prompt, scores in [0, 1], validation coverage. "
            "Failing blocks features and routers.",
        )
    ],
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
    with warehouse.connect() as con:
        grading = grade_responses_report(con, [model], catalog_completer(con, collector.policy()))
        written = grading.written
        outcomes = wh.read_outcomes(con, [model], ["validation"])
        n_validation = wh.expected_count(con, model, ["validation"])
        rows = wh.count_answers(con, model)["grades"]
        check = _check_result(
            con,
            model,
            "check_graded_responses_valid",
            check_grades(outcomes, n_validation, config.coverage_floor),
            outcomes.height,
            n_validation,
        )
    if grading.failed:
        context.log.warning(f"{model}: {grading.failed} answers not graded (retried next run): {grading.examples}")
    accuracy = float(outcomes["score"].mean()) if outcomes.height else None
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "validation_coverage": outcomes.height / max(n_validation, 1),
            "graded_now": written,
            "ungraded_will_retry": grading.failed,
            "judge_cost_usd": grading.judge_cost_usd,
            "validation_accuracy": accuracy,
        },
        check_results=[check],
    )
