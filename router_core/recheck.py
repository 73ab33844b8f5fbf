r"""Confirming a suspected drift by asking again: an LLM's stored answers against its answers now, on the same prompts.

Traffic alone rarely proves that an endpoint got worse on one kind of prompt: a cell of :func:`online_evaluation`
gets a few rated requests a day, and its prediction rests on a few validation prompts, so both sides are noisy.
The warehouse holds something better: the LLM's graded answers to every prompt it was profiled on. Asking some of
them again and comparing each new score with the stored one *on the same prompt* removes the prompts' difficulty
from the comparison. Under "no change" a prompt whose score moved is as likely to have moved up as down (sampling
noise of a non-deterministic endpoint is symmetric), so the number that got worse among those that moved is
Binomial(moved, 1/2): the exact one-sided sign test. A deterministic endpoint that did not change gives no moved
prompt at all, hence never an alarm.

The loop: :func:`suspect_cells` picks (LLM, cluster) cells whose traffic looks worse than predicted (a low bar,
since a suspicion only costs re-asking a few prompts); :func:`recheck_plan` picks which stored prompts of each
suspect cell to ask again (validation prompts first, so a confirmed cell's features can be re-estimated from the
new answers; then the others, in a stable pseudo-random order); :func:`paired_change` tests each cell's old and new
scores and names the cells that changed.

Frames of answers (``stored`` and ``rechecked``) have the columns ``llm`` (String), ``prompt_id`` (String),
``cluster`` (Int64: the prompt's cluster, the argmax of its cluster weights) and ``score`` (Float64 in [0, 1]);
``stored`` also ``split`` (String; ``validation`` sorts first).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core._hashing import unit_hash
from router_core.frames import _first_duplicate, _require_columns

__all__ = [
    "DEFAULT_CONFIRM_Z",
    "DEFAULT_RECHECK_PROMPTS",
    "DEFAULT_SUSPECT_MIN_COUNT",
    "DEFAULT_SUSPECT_Z",
    "paired_change",
    "recheck_plan",
    "suspect_cells",
]

#: z of :func:`online_evaluation` above which a cell is worth asking again (a suspicion, not an alarm).
DEFAULT_SUSPECT_Z = 1.0
#: Fewest rated requests in a cell before it can be suspected.
DEFAULT_SUSPECT_MIN_COUNT = 5
#: Stored prompts asked again per suspect cell.
DEFAULT_RECHECK_PROMPTS = 60
#: A cell changed when its sign test's one-sided p-value is below that of this many standard errors (p < 0.00135).
DEFAULT_CONFIRM_Z = 3.0

_ANSWER_COLUMNS = ["llm", "prompt_id", "cluster", "score"]


def suspect_cells(
    table: pl.DataFrame, z: float = DEFAULT_SUSPECT_Z, min_count: int = DEFAULT_SUSPECT_MIN_COUNT
) -> pl.DataFrame:
    """The cells of an :func:`online_evaluation` ``by_cluster`` table whose ``z`` exceeds ``z`` over at least
    ``min_count`` rated requests, highest ``z`` first: ``llm, cluster, count, z``.

    >>> table = pl.DataFrame({"llm": ["a", "a", "b"], "cluster": [0, 1, 0], "count": [12, 40, 3], "z": [1.6, 0.2, 4.0]})
    >>> suspect_cells(table)["cluster"].to_list()
    [0]
    """
    if not math.isfinite(z):
        raise RouterInputError("suspect_z", z, "must be a finite number")
    if min_count < 1:
        raise RouterInputError("min_count", min_count, "must be >= 1")
    _require_columns(table, "table", ["llm", "cluster", "count", "z"])
    return (
        table.filter((pl.col("z") > z) & (pl.col("count") >= min_count))
        .select("llm", pl.col("cluster").cast(pl.Int64), "count", "z")
        .sort("z", descending=True)
    )


def recheck_plan(
    stored: pl.DataFrame, cells: pl.DataFrame, per_cell: int = DEFAULT_RECHECK_PROMPTS, salt: str = "uniroute-recheck"
) -> pl.DataFrame:
    """Which stored answers of each cell in ``cells`` (``llm, cluster``) to ask again: up to ``per_cell`` per cell,
    its validation prompts first, then the rest, each part in a stable pseudo-random order (the same prompts for
    the same cell on every run). Returns ``stored``'s rows for them, in that order."""
    if per_cell < 1:
        raise RouterInputError("per_cell", per_cell, "must be >= 1")
    _require_columns(stored, "stored", [*_ANSWER_COLUMNS, "split"])
    _require_columns(cells, "cells", ["llm", "cluster"])
    wanted = cells.select("llm", pl.col("cluster").cast(pl.Int64)).unique()
    rows = stored.with_columns(pl.col("cluster").cast(pl.Int64)).join(wanted, on=["llm", "cluster"], how="inner")
    keys = (rows["llm"] + "\x1f" + rows["prompt_id"].cast(pl.String)).to_list()
    return (
        rows.with_columns((pl.col("split") != "validation").alias("_later"), pl.Series("_order", unit_hash(keys, salt)))
        .sort("llm", "cluster", "_later", "_order")
        .group_by("llm", "cluster", maintain_order=True)
        .head(per_cell)
        .drop("_later", "_order")
    )


def paired_change(stored: pl.DataFrame, rechecked: pl.DataFrame, z: float = DEFAULT_CONFIRM_Z) -> pl.DataFrame:
    """Per (LLM, cluster) of ``rechecked``: did the LLM get worse on the prompts asked again?

    Columns: ``llm, cluster, asked`` (prompts with both scores), ``worse`` and ``better`` (prompts whose score fell
    or rose), ``stored_error`` and ``new_error`` (mean error before and now on those prompts), ``p_value`` (exact
    one-sided sign test: P(Binomial(worse + better, 1/2) >= worse)), ``z`` (the normal quantile of ``1 - p_value``,
    capped at 8), ``changed`` (``z`` above the threshold) and ``message`` (one line naming the LLM and cluster).

    >>> old = pl.DataFrame({"llm": ["a"] * 12, "prompt_id": [str(i) for i in range(12)], "cluster": [2] * 12,
    ...                     "score": [1.0] * 12})
    >>> row = paired_change(old, old.with_columns(score=pl.lit(0.0))).row(0, named=True)
    >>> row["worse"], row["better"], round(row["p_value"], 5), row["changed"]
    (12, 0, 0.00024, True)
    """
    if not math.isfinite(z):
        raise RouterInputError("confirm_z", z, "must be a finite number")
    old, new = (_answers(frame, name) for frame, name in ((stored, "stored"), (rechecked, "rechecked")))
    pairs = new.join(old.rename({"score": "stored_score", "cluster": "stored_cluster"}), on=["llm", "prompt_id"])
    cells = (
        pairs.group_by("llm", "cluster")
        .agg(
            pl.len().alias("asked"),
            (pl.col("score") < pl.col("stored_score")).sum().cast(pl.Int64).alias("worse"),
            (pl.col("score") > pl.col("stored_score")).sum().cast(pl.Int64).alias("better"),
            (1 - pl.col("stored_score")).mean().alias("stored_error"),
            (1 - pl.col("score")).mean().alias("new_error"),
        )
        .sort("llm", "cluster")
    )
    from scipy.stats import binom  # imported only here: serving paths import router_core without scipy

    worse, moved = cells["worse"].to_numpy(), (cells["worse"] + cells["better"]).to_numpy()
    p = np.where(moved > 0, binom.sf(worse - 1, np.maximum(moved, 1), 0.5), 1.0)
    zs = np.array([min(NormalDist().inv_cdf(1 - q) if q < 1 else -8.0, 8.0) if q > 0 else 8.0 for q in p])
    out = cells.with_columns(p_value=pl.Series(p, dtype=pl.Float64), z=pl.Series(zs, dtype=pl.Float64))
    out = out.with_columns(changed=pl.col("z") > z)
    return out.with_columns(message=pl.Series([_message(row) for row in out.iter_rows(named=True)], dtype=pl.String))


def _answers(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    _require_columns(frame, name, _ANSWER_COLUMNS)
    out = frame.select("llm", pl.col("prompt_id").cast(pl.String), pl.col("cluster").cast(pl.Int64), "score")
    out = out.with_columns(pl.col("score").cast(pl.Float64))
    bad = out.filter(pl.col("score").is_null() | pl.col("score").is_nan() | ~pl.col("score").is_between(0, 1))
    if bad.height:
        where = f"must be in [0, 1] (prompt_id={bad['prompt_id'][0]!r})"
        raise RouterInputError(f"{name}.score", bad["score"][0], where)
    if dup := _first_duplicate(out, ["llm", "prompt_id"]):
        raise RouterInputError(f"{name}.prompt_id", dup["prompt_id"], f"two answers of {dup['llm']!r} to one prompt")
    return out


def _message(row: dict) -> str:
    return (
        f"{row['llm']} cluster {row['cluster']}: asked again {row['asked']} prompts, {row['worse']} worse and "
        f"{row['better']} better than stored (error {row['stored_error']:.2f} -> {row['new_error']:.2f}, "
        f"sign test p={row['p_value']:.2g}, z {row['z']:.1f})"
    )
