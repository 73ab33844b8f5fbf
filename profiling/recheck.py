"""Confirming a suspected drift by asking again: the endpoint side of :mod:`router_core.recheck`.

For each suspect (LLM, cluster) cell, some of the prompts the LLM has graded answers to in that cluster
(:func:`router_core.recheck_plan`: validation prompts first, then test) are asked again through the collector, under a
USD cap per run that is never passed (:class:`profiling.budget.SpendLimit`: each request's worst case is reserved
before it is sent). Each new answer replaces the stored one in the same transaction that moves the stored one, with
its grade, into the archive (``warehouse.replace_answers``, reason ``drift re-check``): paid answers are never lost.
The new answers are graded like any answer (``profiling.grading``), and each cell's old and new scores go to the
paired sign test (:func:`router_core.paired_change`); the result is recorded in ``drift_rechecks``.

Nothing is paid twice. A cell is asked again only once per suspicion: after a recorded re-check, only once its
traffic has ``recheck_new`` more rated requests (:func:`due_cells`). And an answer already asked again since the
LLM's last recorded re-check (a run that stopped before recording) counts as asked: its earlier grade is read back
from the archive (``warehouse.read_recheck_answers``) and it is not asked a third time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl

import warehouse as wh
from profiling.budget import SpendLimit
from profiling.collector import RetryPolicy, run_collection
from profiling.graders import CompleteFn
from profiling.grading import grade_responses_report
from profiling.pacing import Pacer
from router_core.recheck import DEFAULT_CONFIRM_Z, DEFAULT_RECHECK_PROMPTS, paired_change, recheck_plan

__all__ = ["DEFAULT_RECHECK_NEW", "DEFAULT_SPLITS", "RecheckReport", "due_cells", "prompt_clusters", "recheck_cells"]

#: New rated requests a cell needs on traffic, after a re-check, before it is asked again.
DEFAULT_RECHECK_NEW = 5
#: The splits whose stored answers are asked again (validation first: :func:`router_core.recheck_plan`).
DEFAULT_SPLITS = ("validation", "test")


@dataclass
class RecheckReport:
    """What a run of :func:`recheck_cells` did: ``cells`` as recorded in ``drift_rechecks``, one line per cell or
    LLM left alone (``notes``) and the one line saying the budget stopped it (``budget_message``)."""

    cells: pl.DataFrame = field(default_factory=pl.DataFrame)
    planned: int = 0
    asked: int = 0
    failed: int = 0
    not_asked: int = 0
    spent_usd: float = 0.0
    notes: list[str] = field(default_factory=list)
    budget_message: str | None = None


def prompt_clusters(
    con: duckdb.DuckDBPyConnection, router, embedder_id: str, splits: Sequence[str] = DEFAULT_SPLITS
) -> pl.DataFrame:
    """Each prompt of ``splits`` with its cluster under ``router``'s map (the heaviest of its cluster weights, as
    the online evaluation counts a request): ``prompt_id, cluster``."""
    ids, vectors = wh.read_prompt_vectors(con, embedder_id, splits)
    clusters = np.asarray(router.cluster_weights(vectors)).argmax(axis=1) if ids else np.zeros(0, dtype=np.int64)
    return pl.DataFrame({"prompt_id": ids, "cluster": clusters}, schema={"prompt_id": pl.String, "cluster": pl.Int64})


def due_cells(
    suspects: pl.DataFrame, latest: pl.DataFrame, recheck_new: int = DEFAULT_RECHECK_NEW
) -> tuple[pl.DataFrame, list[str]]:
    """The ``suspects`` (``llm, cluster, count, z``) to ask again: never re-checked under this router version
    (``latest``: ``warehouse.latest_rechecks``), or with at least ``recheck_new`` more rated requests since; and one
    line per suspect left alone."""
    if recheck_new < 1:
        raise ValueError(f"recheck_new={recheck_new!r}: must be >= 1")
    before = latest.select("llm", pl.col("cluster").cast(pl.Int64), pl.col("rated").cast(pl.Int64))
    joined = suspects.join(before, on=["llm", "cluster"], how="left")
    due = pl.col("rated").is_null() | (pl.col("count") - pl.col("rated") >= recheck_new)
    notes = [
        f"{row['llm']} cluster {row['cluster']}: asked again at {row['rated']} rated requests; not again before "
        f"{row['rated'] + recheck_new} (now {row['count']})"
        for row in joined.filter(~due).iter_rows(named=True)
    ]
    return joined.filter(due).drop("rated"), notes


class _ReplacingSink:
    """The collector's sink for answers asked again: each batch replaces the stored answers to its pairs (archived
    at ``archived_at``). A pair that fails keeps its stored answer, so failures are only counted."""

    def __init__(self, warehouse: wh.Opener, archived_at: datetime) -> None:
        self.warehouse, self.archived_at = warehouse, archived_at

    def write(self, answers: pl.DataFrame, failures: pl.DataFrame) -> int:
        if answers.height == 0:
            return 0
        with wh.opened(self.warehouse) as con:
            return wh.replace_answers(con, answers, wh.RECHECK_REASON, self.archived_at)


def recheck_cells(
    warehouse: wh.Opener,
    cells: pl.DataFrame,
    clusters: pl.DataFrame,
    router_version: str,
    budget_usd: float,
    complete: CompleteFn | None = None,
    per_cell: int = DEFAULT_RECHECK_PROMPTS,
    confirm_z: float = DEFAULT_CONFIRM_Z,
    splits: Sequence[str] = DEFAULT_SPLITS,
    policy: RetryPolicy | None = None,
    pacer: Pacer | None = None,
    log: Callable[[str], None] | None = None,
    whole_llm: bool = True,
) -> RecheckReport:
    """Ask each cell of ``cells`` (``llm, cluster, count, z``: :func:`due_cells`) again, most suspect LLM first,
    spending at most ``budget_usd`` in all; grade the new answers (``complete`` calls judges), test each cell and
    record it (``router_version``; ``clusters``: :func:`prompt_clusters`). Cells nothing could be asked of are not
    recorded (a later run tries them again). ``whole_llm``: once a cell of an LLM is confirmed changed, its other
    clusters are asked again too (an endpoint that changed on one kind of prompt may have changed on others whose
    traffic is too thin to suspect: on ``benchmarks/traffic_loop.py`` this lifted recovery from 0.38 to 0.95 where a
    second degraded cluster was never suspected)."""
    if not (isinstance(budget_usd, int | float) and math.isfinite(budget_usd) and budget_usd >= 0):
        raise ValueError(f"budget_usd={budget_usd!r}: must be a finite number >= 0")
    report = RecheckReport()
    recorded = []
    options = {"policy": policy, "pacer": pacer, "per_cell": per_cell, "splits": splits}

    def ask(llm: str, mine: pl.DataFrame) -> pl.DataFrame:
        rows = _recheck_llm(warehouse, llm, mine, clusters, budget_usd, report, **options)
        if rows is None:
            return pl.DataFrame()
        grade_responses_report(warehouse, [llm], complete)
        if (done := _recorded(warehouse, llm, mine, rows, router_version, confirm_z)).height:
            recorded.append(done)
            for message in done["message"]:
                if log:
                    log(message)
        return done

    order = cells.group_by("llm").agg(pl.col("z").max()).sort("z", "llm", descending=[True, False])["llm"]
    for llm in order:
        mine = cells.filter(pl.col("llm") == llm)
        done = ask(llm, mine)
        if whole_llm and done.height and done["changed"].any():
            others = _other_cells(llm, mine, clusters)
            if others.height:
                ask(llm, others)
    if report.not_asked:
        report.budget_message = (
            f"drift re-check budget reached: {report.spent_usd:.6f} of {budget_usd:.6f} USD spent; "
            f"{report.not_asked} planned prompts not asked (raise drift_rechecks.config.budget_usd to ask them)"
        )
    report.cells = pl.concat(recorded, how="vertical_relaxed") if recorded else pl.DataFrame()
    return report


def _other_cells(llm: str, cells: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """``llm``'s clusters (of ``clusters``) not in ``cells``, as cells without traffic evidence (count 0, no z)."""
    others = sorted(set(clusters["cluster"].unique().to_list()) - set(cells["cluster"].to_list()))
    schema = {"llm": pl.String, "cluster": pl.Int64, "count": pl.Int64, "z": pl.Float64}
    return pl.DataFrame({"llm": [llm] * len(others), "cluster": others, "count": [0] * len(others), "z": None}, schema)


@dataclass(frozen=True)
class _Asked:
    """One LLM's re-check in progress: the stored answers planned, when they were replaced, and the LLM's last
    recorded re-check before."""

    plan: pl.DataFrame
    checked_at: datetime
    since: datetime | None
    splits: Sequence[str]


def _recheck_llm(
    warehouse: wh.Opener,
    llm: str,
    cells: pl.DataFrame,
    clusters: pl.DataFrame,
    budget_usd: float,
    report: RecheckReport,
    per_cell: int,
    splits: Sequence[str],
    policy: RetryPolicy | None,
    pacer: Pacer | None,
) -> _Asked | None:
    """Plan ``llm``'s cells and ask the planned answers not asked again yet, within what is left of the budget."""
    with wh.opened(warehouse) as con:
        catalog = wh.read_llms(con, active_only=True).filter(pl.col("name") == llm)
        since = wh.last_recheck_at(con, llm)
        stored = wh.read_recheck_answers(con, llm, splits, since).join(clusters, on="prompt_id")
        plan = recheck_plan(stored, cells, per_cell) if stored.height else stored
        pairs = wh.read_pair_requests(con, llm, plan.filter(~pl.col("rechecked"))["prompt_id"].to_list())
    if catalog.height == 0 or catalog["base_url"][0] is None:
        report.notes.append(f"{llm}: not asked again: not an active catalog LLM with an endpoint")
        return None
    if plan.height == 0:
        report.notes.append(f"{llm}: no stored graded answers on {list(splits)} in its suspect clusters to ask again")
        return None
    report.planned += plan.height
    checked_at = datetime.now(UTC).replace(tzinfo=None)
    limit = SpendLimit({llm: max(budget_usd - report.spent_usd, 0.0)}, label="drift re-check budget")
    collected = run_collection(
        _ReplacingSink(warehouse, checked_at), pairs, catalog, policy=policy, pacer=pacer, budget=limit, progress=False
    )
    report.spent_usd += limit.spent[llm]
    report.asked += collected.stored
    report.failed += collected.failed
    report.not_asked += sum(collected.not_asked.values())
    return _Asked(plan, checked_at, since, splits)


def _recorded(
    warehouse: wh.Opener, llm: str, cells: pl.DataFrame, asked: _Asked, router_version: str, confirm_z: float
) -> pl.DataFrame:
    """Test and record each of ``llm``'s cells on its planned answers that were asked again and graded."""
    plan = asked.plan.select("prompt_id", "cluster")
    with wh.opened(warehouse) as con:
        answers = wh.read_recheck_answers(con, llm, asked.splits, asked.since)
        done = answers.join(plan, on="prompt_id").filter(pl.col("rechecked") & pl.col("new_score").is_not_null())
        if done.height == 0:
            return pl.DataFrame()
        before = done.select("llm", "prompt_id", "cluster", "score")
        changes = paired_change(before, done.select("llm", "prompt_id", "cluster", score="new_score"), confirm_z)
        costs = done.group_by("cluster").agg(pl.col("new_cost_usd").sum().alias("cost_usd"))
        rows = (
            changes.join(cells.select("cluster", rated="count", traffic_z="z"), on="cluster", how="left")
            .join(costs, on="cluster", how="left")
            .with_columns(router_version=pl.lit(router_version), checked_at=pl.lit(asked.checked_at))
        )
        wh.record_rechecks(con, rows)
    return rows
