"""Bring prompts and existing results into the warehouse instead of re-collecting them.

- :func:`import_mmlu_pro`: prompts of a dataset in the layout of ``../shared/data/mmlu_pro`` (questions,
  options, answer letter, category), rendered for the LLMs and split train/validation/test.
- :func:`import_graded_results`: already-graded results (prompt_id, prompt text, model, score in [0, 1]) from
  Parquet, CSV or JSONL, e.g. exports of lm-evaluation-harness or HELM.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import polars as pl

import warehouse as wh
from profiling.rendering import render_mmlu_pro, router_input
from router_core import assign_splits, check_outcomes, prompt_hash

__all__ = ["DEFAULT_SHARES", "import_graded_results", "import_mmlu_pro", "stratified_sample"]

DEFAULT_SHARES = {"train": 0.6, "validation": 0.1, "test": 0.3}
_READERS = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson}


def stratified_sample(prompts: pl.DataFrame, n: int, seed: int, by: str = "category") -> pl.DataFrame:
    """About ``n`` rows of ``prompts`` with the strata (``by``) in their original proportions."""
    if n >= prompts.height:
        return prompts
    frac = n / prompts.height
    rank = pl.int_range(pl.len()).shuffle(seed=seed).over(by)
    keep = (pl.len().over(by) * frac).round().cast(pl.Int64).clip(lower_bound=1)
    return prompts.filter(rank < keep)


def import_mmlu_pro(
    con: duckdb.DuckDBPyConnection,
    data_dir: str | os.PathLike[str],
    seed: int = 0,
    shares: dict[str, float] | None = None,
    question_ids: list[int] | None = None,
    sample: int | None = None,
) -> pl.DataFrame:
    """Upsert the questions of an MMLU-Pro-layout dataset as prompts ``mmlu_pro/<question_id>``.

    Splits are stratified by category with ``seed``; ``question_ids`` restricts the import, ``sample`` keeps a
    stratified sample of about that many questions.
    Re-importing is idempotent. Returns the imported prompts.
    """
    path = Path(data_dir) / "questions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no questions.parquet in {data_dir}; set UNIROUTE_MMLU_PRO_DIR or pass the path")
    questions = pl.read_parquet(path)
    if question_ids is not None:
        questions = questions.filter(pl.col("question_id").is_in(question_ids))
    if sample is not None:
        questions = stratified_sample(questions, sample, seed)
    rows = [
        {
            "prompt_id": f"mmlu_pro/{q['question_id']}",
            "category": q["category"],
            "text": router_input(q["question"], q["options"]),
            "prompt": render_mmlu_pro(q["question"], q["options"], q["category"]),
            "reference": q["answer"],
        }
        for q in questions.iter_rows(named=True)
    ]
    prompts = pl.DataFrame(rows).with_columns(
        pl.lit("mmlu_pro").alias("dataset"),
        pl.lit("mmlu_pro_letter").alias("grader"),
        pl.col("text").map_elements(prompt_hash, return_dtype=pl.String).alias("content_hash"),
    )
    prompts = assign_splits(prompts.sort("prompt_id"), shares or DEFAULT_SHARES, seed)
    wh.upsert_prompts(con, prompts)
    return prompts


def import_graded_results(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike[str],
    dataset: str,
    seed: int = 0,
    shares: dict[str, float] | None = None,
    grader: str = "imported",
) -> int:
    """Import rows ``prompt_id, prompt, model, score`` (optional ``category``); returns grades written.

    Prompts get ids ``<dataset>/<prompt_id>`` and splits drawn with ``seed`` (a prompt already in the
    warehouse keeps its split). Scores must lie in [0, 1]; a bad file raises and writes nothing.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"path={str(path)!r}: unsupported format; use one of {sorted(_READERS)}")
    results = reader(path)
    missing = {"prompt_id", "prompt", "model", "score"} - set(results.columns)
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {sorted(missing)} (have {results.columns})")
    check_outcomes(results.select("model", "prompt_id", "score"))  # before any write: a bad file writes nothing
    results = results.with_columns((pl.lit(f"{dataset}/") + pl.col("prompt_id").cast(pl.String)).alias("prompt_id"))
    prompts = results.group_by("prompt_id", maintain_order=True).agg(
        pl.col("prompt").first(), *([pl.col("category").first()] if "category" in results.columns else [])
    )
    prompts = prompts.with_columns(
        pl.lit(dataset).alias("dataset"),
        pl.col("prompt").alias("text"),
        pl.lit(None, dtype=pl.String).alias("reference"),
        pl.lit(grader).alias("grader"),
        pl.col("prompt").map_elements(prompt_hash, return_dtype=pl.String).alias("content_hash"),
    )
    known = wh.read_prompts(con, dataset=dataset).select("prompt_id", pl.col("split").alias("_known"))
    prompts = (
        assign_splits(
            prompts, shares or DEFAULT_SHARES, seed, stratify_by="category" if "category" in prompts.columns else None
        )
        .join(known, on="prompt_id", how="left")
        .with_columns(pl.coalesce("_known", "split").alias("split"))
        .drop("_known")
    )
    grades = results.select("model", "prompt_id", "score").with_columns(
        pl.lit(grader).alias("grader"), pl.lit("1").alias("grader_version")
    )
    wh.upsert_prompts(con, prompts)
    return wh.upsert_grades(con, grades)
