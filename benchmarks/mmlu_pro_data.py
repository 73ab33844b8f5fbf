"""Load routing data into router_core's frames (prompts, outcomes, llms): ``../shared/data/mmlu_pro``, or any
dataset in the generic layout (:func:`load_generic`)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from profiling.rendering import CHARS_PER_TOKEN, router_input

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "mmlu_pro"
#: Git-ignored home of caches and results (embeddings, figures).
DATA_HOME = Path(os.environ.get("UNIROUTE_DATA_HOME", PROJECT_ROOT / "data"))


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data DIR``: the MMLU-Pro directory (default ``$UNIROUTE_MMLU_PRO_DIR``, else :data:`DEFAULT_DATA_DIR`)."""
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("UNIROUTE_MMLU_PRO_DIR", DEFAULT_DATA_DIR)))


def data_missing(data: Path) -> bool:
    """Whether ``data`` holds no MMLU-Pro questions; if so, says so on stderr in one line."""
    if (data / "questions.parquet").exists():
        return False
    print(f"error: no dataset at {data}; set UNIROUTE_MMLU_PRO_DIR or pass --data", file=sys.stderr)
    return True


def distinct_question_ids(data: Path, n: int) -> list[int]:
    """The first ``n`` question ids, one per distinct question text and options (some MMLU-Pro questions repeat:
    a replay endpoint's per-prompt request log then maps one-to-one onto warehouse pairs)."""
    questions = pl.read_parquet(data / "questions.parquet", columns=["question_id", "question", "options"])
    distinct = questions.unique(subset=["question", "options"], keep="first", maintain_order=True)["question_id"]
    return distinct.head(n).to_list()


@dataclass(frozen=True)
class RoutingDataset:
    """One routing dataset in router_core's column conventions.

    prompts: prompt_id, text, category. outcomes: model, prompt_id, score, cost_usd (per query, from
    tokens). llms: model, cost (USD per Mtok).
    """

    prompts: pl.DataFrame
    outcomes: pl.DataFrame
    llms: pl.DataFrame


def _tokens(text: pl.Expr) -> pl.Expr:
    return (text.str.len_chars() / CHARS_PER_TOKEN).ceil()


def load_mmlu_pro(data_dir: str | os.PathLike[str] | None = None) -> RoutingDataset:
    """Load the shared MMLU-Pro routing data, keeping prompts that every LLM answered.

    A prompt a model lacks is "not collected", never "wrong", so it is dropped rather than scored 0.
    """
    data_dir = Path(data_dir or os.environ.get("UNIROUTE_MMLU_PRO_DIR", DEFAULT_DATA_DIR))
    if not (data_dir / "questions.parquet").exists():
        raise FileNotFoundError(f"MMLU-Pro data not found at {data_dir}; set UNIROUTE_MMLU_PRO_DIR or pass --data DIR")
    questions = pl.read_parquet(data_dir / "questions.parquet")
    responses = pl.read_parquet(data_dir / "responses.parquet", columns=["model", "question_id", "response", "correct"])
    models = pl.read_csv(data_dir / "models.csv")
    n_models = models.height
    complete = (
        responses.group_by("question_id").agg(pl.col("model").n_unique().alias("n")).filter(pl.col("n") == n_models)
    )
    prompts = (
        questions.join(complete.select("question_id"), on="question_id")
        .with_columns(
            pl.struct("question", "options")
            .map_elements(lambda r: router_input(r["question"], r["options"]), return_dtype=pl.String)
            .alias("text")
        )
        .select(pl.col("question_id").alias("prompt_id"), "text", "category")
        .sort("prompt_id")
    )
    prices = models.select("model", pl.col("usd_per_mtok").alias("cost"))
    outcomes = (
        responses.join(prompts.select("prompt_id", "text"), left_on="question_id", right_on="prompt_id")
        .join(prices, on="model")
        .select(
            "model",
            pl.col("question_id").alias("prompt_id"),
            pl.col("correct").cast(pl.Float64).alias("score"),
            (pl.col("cost") * (_tokens(pl.col("text")) + _tokens(pl.col("response"))) / 1e6).alias("cost_usd"),
        )
    )
    return RoutingDataset(prompts=prompts, outcomes=outcomes, llms=prices.sort("model"))


def load_routing_data(data_dir: str | os.PathLike[str] | None = None) -> RoutingDataset:
    """:func:`load_mmlu_pro` for a directory in its layout (the default), else :func:`load_generic`."""
    if data_dir is None or not Path(data_dir).is_dir() or (Path(data_dir) / "questions.parquet").exists():
        return load_mmlu_pro(data_dir)
    return load_generic(data_dir)


def _one_file(directory: Path, stem: str) -> Path | None:
    found = [
        directory / f"{stem}{suffix}"
        for suffix in (".parquet", ".csv", ".jsonl")
        if (directory / f"{stem}{suffix}").exists()
    ]
    if len(found) > 1:
        raise ValueError(f"{directory}: several {stem} files ({[f.name for f in found]}); keep one")
    return found[0] if found else None


def load_generic(data_dir: str | os.PathLike[str]) -> RoutingDataset:
    """A dataset in the layout users bring (docs/data.md), keeping prompts every LLM answered.

    ``DIR/results.{parquet,csv,jsonl}`` (or ``DIR/results/``, lm-evaluation-harness samples): scores and, where
    known, per-query USD costs, in any format ``uniroute import-results`` reads; ``DIR/prompts.{jsonl,csv,parquet}``
    (optional; else the results' ``prompt`` column) in the prompt file format, with ``DIR/spec.yaml`` (optional)
    saying what the router embeds; ``DIR/models.csv`` (optional: ``model, usd_per_mtok``) prices answers that carry
    no cost, from their tokens. Without prices, an LLM's flat cost is its mean per-query cost.
    """
    from profiling.datasets import DatasetSpec, load_spec, read_prompt_file, render
    from profiling.results import read_results

    directory = Path(data_dir)
    source = _one_file(directory, "results") or (directory / "results" if (directory / "results").is_dir() else None)
    if source is None:
        raise FileNotFoundError(f"{directory}: no results.parquet/.csv/.jsonl or results/ (docs/data.md)")
    results = read_results(source)
    spec = load_spec(directory / "spec.yaml") if (directory / "spec.yaml").exists() else DatasetSpec()
    prompt_file = _one_file(directory, "prompts")
    if prompt_file is not None:
        rows = read_prompt_file(prompt_file)
    else:
        rows = results.group_by("prompt_id", maintain_order=True).agg(
            pl.col("prompt").first(), pl.col("category").first()
        )
        rows = rows.with_columns(pl.lit(None, pl.String).alias(c) for c in ("messages", "metadata"))
    texts = [render(spec, row, f"prompt_id={row['prompt_id']!r}")[2] for row in rows.iter_rows(named=True)]
    models = sorted(set(results["model"]))
    complete = (
        results.group_by("prompt_id").agg(pl.col("model").n_unique().alias("n")).filter(pl.col("n") == len(models))
    )
    prompts = (
        rows.select("prompt_id", pl.Series("text", texts), pl.col("category").fill_null(""))
        .join(complete.select("prompt_id"), on="prompt_id")
        .sort("prompt_id")
    )
    prices_file = directory / "models.csv"
    prices = (
        pl.read_csv(prices_file).select("model", pl.col("usd_per_mtok").cast(pl.Float64))
        if prices_file.exists()
        else None
    )
    outcomes = results.filter(pl.col("prompt_id").is_in(prompts["prompt_id"].to_list()))
    if prices is not None:
        tokens = pl.coalesce(
            pl.col("input_tokens") + pl.col("output_tokens"),
            _tokens(pl.col("prompt").fill_null("")) + _tokens(pl.col("response").fill_null("")),
        )
        outcomes = outcomes.join(prices, on="model", how="left").with_columns(
            pl.coalesce("cost_usd", pl.col("usd_per_mtok") * tokens / 1e6).alias("cost_usd")
        )
    if (unpriced := outcomes.filter(pl.col("cost_usd").is_null())).height:
        raise ValueError(
            f"{directory}: model={unpriced['model'][0]!r} prompt_id={unpriced['prompt_id'][0]!r} has no cost: give "
            "per-query USD (cost_usd) in the results or prices in models.csv"
        )
    mean_cost = outcomes.group_by("model").agg(pl.col("cost_usd").mean().alias("cost"))
    llms = prices.select("model", pl.col("usd_per_mtok").alias("cost")) if prices is not None else mean_cost
    return RoutingDataset(
        prompts=prompts,
        outcomes=outcomes.select("model", "prompt_id", "score", "cost_usd"),
        llms=llms.filter(pl.col("model").is_in(models)).sort("model"),
    )
