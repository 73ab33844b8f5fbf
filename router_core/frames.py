"""Validate router_core's input frames and turn them into aligned numpy arrays.

Column conventions
------------------
prompts  : prompt_id, text, split (optional)
outcomes : model, prompt_id, score in [0, 1] (1 = correct; binary or graded)
llms     : model, cost (>= 0; any unit, the same for all LLMs)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from router_core._errors import RouterInputError

__all__ = [
    "assign_splits",
    "check_cost",
    "check_llms",
    "check_outcomes",
    "check_prompts",
    "error_matrix",
    "value_matrix",
]


def _require_columns(frame: pl.DataFrame, name: str, columns: Sequence[str]) -> None:
    if not isinstance(frame, pl.DataFrame):
        raise RouterInputError(name, type(frame).__name__, "must be a polars.DataFrame")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RouterInputError(f"{name}.columns", frame.columns, f"missing column(s) {missing}")


def _first_duplicate(frame: pl.DataFrame, keys: list[str]) -> dict | None:
    dup = frame.filter(frame.select(keys).is_duplicated()).select(keys)
    return dup.row(0, named=True) if dup.height else None


SPLITS = ("train", "validation", "test")


def check_prompts(prompts: pl.DataFrame) -> pl.DataFrame:
    """Check a prompts frame: unique ``prompt_id``, non-empty ``text``, ``split`` (if any) in :data:`SPLITS`."""
    _require_columns(prompts, "prompts", ["prompt_id", "text"])
    if prompts["prompt_id"].null_count():
        raise RouterInputError("prompt_id", None, "prompts contain a null prompt_id")
    if dup := _first_duplicate(prompts, ["prompt_id"]):
        raise RouterInputError("prompt_id", dup["prompt_id"], "duplicate prompt_id in prompts")
    empty = prompts.filter(pl.col("text").is_null() | (pl.col("text").str.strip_chars() == ""))
    if empty.height:
        raise RouterInputError("text", empty["text"][0], f"empty text for prompt_id={empty['prompt_id'][0]!r}")
    if "split" in prompts.columns:
        bad = prompts.filter(~pl.col("split").is_in(SPLITS) | pl.col("split").is_null())
        if bad.height:
            raise RouterInputError(
                "split", bad["split"][0], f"must be one of {SPLITS} (prompt_id={bad['prompt_id'][0]!r})"
            )
    return prompts


def assign_splits(
    prompts: pl.DataFrame, shares: dict[str, float], seed: int, stratify_by: str | None = "category"
) -> pl.DataFrame:
    """Add a ``split`` column: each stratum is shuffled with ``seed`` and cut by ``shares`` in their order.

    The last split takes each stratum's last share of the shuffled order, so growing an earlier share at the
    expense of another earlier one leaves the last split's prompts unchanged.

    >>> frame = pl.DataFrame({"prompt_id": range(10), "category": ["a"] * 10})
    >>> split = assign_splits(frame, {"train": 0.6, "validation": 0.1, "test": 0.3}, seed=0)["split"]
    >>> [split.to_list().count(name) for name in ("train", "validation", "test")]
    [6, 1, 3]
    """
    unknown = set(shares) - set(SPLITS)
    if unknown or abs(sum(shares.values()) - 1) > 1e-9 or min(shares.values()) < 0:
        raise RouterInputError("shares", shares, f"must be non-negative shares of {SPLITS} summing to 1")
    group = pl.col(stratify_by) if stratify_by else pl.lit(0)
    frac = pl.int_range(pl.len()).shuffle(seed=seed).over(group) / pl.len().over(group)
    names = list(shares)
    split = pl.lit(names[-1])
    for name, edge in reversed(list(zip(names[:-1], np.cumsum(list(shares.values()))[:-1], strict=True))):
        split = pl.when(frac < edge).then(pl.lit(name)).otherwise(split)
    return prompts.with_columns(split.alias("split"))


def check_outcomes(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Check an outcomes frame: one row per (model, prompt_id), scores finite and in [0, 1]."""
    _require_columns(outcomes, "outcomes", ["model", "prompt_id", "score"])
    if outcomes["model"].null_count() or outcomes["prompt_id"].null_count():
        raise RouterInputError("model/prompt_id", None, "outcomes contain a null model or prompt_id")
    if not outcomes["score"].dtype.is_numeric():
        raise RouterInputError("score", str(outcomes["score"].dtype), "must be numeric")
    score = pl.col("score").cast(pl.Float64)
    bad = outcomes.filter(score.is_null() | score.is_nan() | (score < 0) | (score > 1))
    if bad.height:
        row = bad.row(0, named=True)
        raise RouterInputError(
            "score",
            row["score"],
            f"must be in [0, 1] (model={row['model']!r}, prompt_id={row['prompt_id']!r})",
        )
    if dup := _first_duplicate(outcomes, ["model", "prompt_id"]):
        raise RouterInputError("(model, prompt_id)", (dup["model"], dup["prompt_id"]), "duplicate outcome")
    return outcomes


def check_llms(llms: pl.DataFrame) -> pl.DataFrame:
    """Check an llms frame: unique ``model`` names and finite, non-negative ``cost``."""
    _require_columns(llms, "llms", ["model", "cost"])
    if dup := _first_duplicate(llms, ["model"]):
        raise RouterInputError("model", dup["model"], "duplicate model in llms")
    for model, cost in llms.select("model", "cost").iter_rows():
        check_cost(model, cost)
    return llms


def check_cost(model: str, cost: float) -> float:
    """Return ``cost`` as a float, or raise if it is missing, NaN, infinite or negative."""
    if cost is None or not np.isfinite(cost) or cost < 0:
        raise RouterInputError("cost", cost, f"must be a finite number >= 0 (model={model!r})")
    return float(cost)


def value_matrix(frame: pl.DataFrame, prompt_ids: Sequence, models: Sequence[str], value: str) -> np.ndarray:
    """(n_prompts, n_models) matrix of ``frame[value]`` per (prompt_id, model); NaN where a pair is absent.

    Rows of ``frame`` for other prompts or models are ignored.
    """
    _require_columns(frame, "frame", ["model", "prompt_id", value])
    ids = pl.Series("prompt_id", list(prompt_ids))
    if ids.is_duplicated().any():
        raise RouterInputError("prompt_id", ids.filter(ids.is_duplicated())[0], "duplicate in prompt_ids")
    names = pl.Series("model", list(models), dtype=pl.String)
    if names.is_duplicated().any():
        raise RouterInputError("model", names.filter(names.is_duplicated())[0], "duplicate model")
    cells = (
        frame.select("model", "prompt_id", value)
        .with_columns(pl.col("prompt_id").cast(ids.dtype, strict=False))
        .join(pl.DataFrame({"prompt_id": ids, "_row": np.arange(len(ids))}), on="prompt_id")
        .join(pl.DataFrame({"model": names, "_col": np.arange(len(names))}), on="model")
    )
    matrix = np.full((len(ids), len(names)), np.nan)
    matrix[cells["_row"].to_numpy(), cells["_col"].to_numpy()] = cells[value].cast(pl.Float64).to_numpy()
    return matrix


def error_matrix(outcomes: pl.DataFrame, prompt_ids: Sequence, models: Sequence[str]) -> np.ndarray:
    """(n_prompts, n_models) matrix of errors ``1 - score``; NaN where a pair was not collected.

    Raises if a model has no outcome at all on ``prompt_ids`` (it could not be profiled).
    """
    errors = 1.0 - value_matrix(check_outcomes(outcomes), prompt_ids, models, "score")
    empty = np.flatnonzero(np.isnan(errors).all(axis=0)) if len(errors) else np.arange(len(models))
    if empty.size:
        raise RouterInputError("model", models[empty[0]], "has no outcome on any of the given prompts")
    return errors
