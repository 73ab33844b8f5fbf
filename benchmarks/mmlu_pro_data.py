"""Load ``../shared/data/mmlu_pro`` into router_core's frames: prompts, outcomes, llms."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from profiling.rendering import CHARS_PER_TOKEN, router_input

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "mmlu_pro"
#: Git-ignored home of caches and results (embeddings, figures).
DATA_HOME = Path(os.environ.get("UNIROUTE_DATA_HOME", PROJECT_ROOT / "data"))


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
