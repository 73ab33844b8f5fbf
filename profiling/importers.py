"""Bring prompts and existing results into the warehouse instead of re-collecting them.

- :func:`import_mmlu_pro`: the prompts of a dataset in the layout of ``../shared/data/mmlu_pro``, through the
  ``mmlu_pro`` adapter of :mod:`profiling.datasets` (the general path is :func:`profiling.datasets.import_dataset`).
- :func:`import_results`: evaluation results users already have (long tables, RouterBench-style wide tables,
  lm-evaluation-harness ``--log_samples``; :mod:`profiling.results`) as imported answers and grades, with their
  per-query costs. Their LLMs join the catalog as import-only entries (no endpoint) and count as profiled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

import warehouse as wh
from profiling.datasets import (
    IMPORTED_GRADER,
    DatasetSpec,
    PromptSetError,
    load_spec,
    normalise_rows,
    prepare_prompts,
    stratified_sample,
    write_prompt_set,
)
from profiling.datasets import import_dataset as _import_dataset
from profiling.results import read_results
from router_core import prompt_hash

__all__ = ["IMPORTED_GRADER", "ImportReport", "import_mmlu_pro", "import_results", "stratified_sample"]


def import_mmlu_pro(
    con: duckdb.DuckDBPyConnection,
    data_dir: str | os.PathLike[str],
    seed: int = 0,
    shares: dict[str, float] | None = None,
    question_ids: list[int] | None = None,
    sample: int | None = None,
) -> pl.DataFrame:
    """Store the questions of an MMLU-Pro-layout directory as dataset ``mmlu_pro`` (prompts ``mmlu_pro/<id>``).

    ``question_ids`` restricts the import; ``sample`` keeps a stratified sample of about that many questions.
    Splits are drawn once per prompt (stratified by category, ``seed``) and never move. Returns the prompts.
    """
    if question_ids is None:
        return _import_dataset(con, data_dir, "mmlu_pro", "mmlu_pro", sample=sample, seed=seed, shares=shares)
    from profiling.datasets import get_adapter

    rows, spec = get_adapter("mmlu_pro").load(Path(data_dir))
    rows = rows.filter(pl.col("prompt_id").is_in([str(q) for q in question_ids]))
    spec = load_spec(spec.model_dump(exclude_unset=True), seed=seed, shares=shares)
    return write_prompt_set(con, "mmlu_pro", rows, spec, source=str(data_dir))


@dataclass
class ImportReport:
    """What an import of results stored."""

    dataset: str
    prompts_added: int = 0
    answers_stored: int = 0
    grades_written: int = 0
    models: list[str] = field(default_factory=list)
    models_added_to_catalog: list[str] = field(default_factory=list)
    with_cost: int = 0


def import_results(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike[str],
    dataset: str,
    format: str = "auto",
    model: str | None = None,
    score_field: str | None = None,
    catalog: str | os.PathLike[str] | None = None,
    spec: DatasetSpec | None = None,
) -> ImportReport:
    """Import a results table as answers (``source = 'imported'``) and grades of ``dataset``.

    Prompts the warehouse lacks are added from the table's ``prompt`` column (a dataset created here is
    results-only: never asked of an endpoint); a stored prompt keeps its text and split. LLMs missing from the
    warehouse catalog are appended to ``catalog`` (a ``llms.yaml``) as import-only entries and synced; without
    ``catalog`` they are an error. Re-importing stores nothing twice; a pair already answered by an endpoint keeps
    that answer and its grade. Everything is checked before anything is written.
    """
    results = read_results(path, format, model=model, score_field=score_field)
    results = results.with_columns((pl.lit(f"{dataset}/") + pl.col("prompt_id")).alias("stored_id"))
    stored = wh.read_prompts(con).filter(pl.col("prompt_id").is_in(results["stored_id"].unique().to_list()))
    new = results.filter(~pl.col("stored_id").is_in(stored["prompt_id"].to_list()))
    known_llms = set(wh.read_llms(con)["name"])
    missing_llms = sorted(set(results["model"]) - known_llms)
    if missing_llms and catalog is None:
        raise PromptSetError(f"model={missing_llms[0]!r}: not in the catalog; add it (or pass a catalog to extend)")
    if (no_text := new.filter(pl.col("prompt").is_null())).height:
        raise PromptSetError(
            f"prompt_id={no_text['prompt_id'][0]!r}: not in the warehouse and the results give no prompt text "
            f"(import the prompts first: uniroute import-prompts FILE --dataset {dataset})"
        )
    existing = wh.read_datasets(con).filter(pl.col("name") == dataset)
    if spec is None:
        spec = (
            DatasetSpec.model_validate_json(existing["spec"][0])
            if existing.height
            else DatasetSpec(collectable=False, grader=IMPORTED_GRADER)
        )
    rows = _prompt_rows(new)
    if rows.height:  # checked before anything is written
        prepare_prompts(dataset, rows, spec)
    report = ImportReport(dataset=dataset, models=sorted(set(results["model"])))
    if missing_llms:
        for name in missing_llms:  # import-only: no endpoint, so nothing will ever ask it
            wh.add_to_catalog(catalog, {"name": name, "base_url": None})
        wh.sync_catalog(con, catalog)
        report.models_added_to_catalog = missing_llms
    if rows.height:
        report.prompts_added = write_prompt_set(con, dataset, rows, spec, source=str(path)).height
    answers = results.select(
        "model",
        pl.col("stored_id").alias("prompt_id"),
        "response",
        pl.col("input_tokens").alias("prompt_tokens"),
        pl.col("output_tokens").alias("completion_tokens"),
        "cost_usd",
        pl.col("prompt").fill_null("").map_elements(prompt_hash, return_dtype=pl.String).alias("prompt_hash"),
        pl.lit(f"import-{prompt_hash(str(Path(path).resolve()))[:12]}").alias("run_id"),
        pl.lit("imported").alias("source"),
    )
    report.answers_stored = wh.insert_responses(con, answers)
    # grades only where the stored answer is the imported one: an endpoint's answer keeps its own grade
    imported = wh.read_responses(con, report.models).filter(pl.col("source") == "imported").select("model", "prompt_id")
    grades = (
        results.select("model", pl.col("stored_id").alias("prompt_id"), "score")
        .join(imported, on=["model", "prompt_id"])
        .with_columns(pl.lit(IMPORTED_GRADER).alias("grader"), pl.lit("1").alias("grader_version"))
    )
    report.grades_written = wh.upsert_grades(con, grades)
    report.with_cost = int(results["cost_usd"].is_not_null().sum())
    return report


def _prompt_rows(results: pl.DataFrame) -> pl.DataFrame:
    """Prompt rows (the file format) of the results' prompts."""
    firsts = results.group_by("prompt_id", maintain_order=True).agg(
        pl.col("prompt").first(), pl.col("category").first(), pl.col("reference").first(), pl.col("split").first()
    )
    return normalise_rows(firsts)
