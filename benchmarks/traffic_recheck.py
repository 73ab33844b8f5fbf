"""The traffic loop's two-stage drift check: traffic raises a suspicion, asking stored prompts again confirms it.

At every check of :mod:`benchmarks.traffic_loop`, :func:`router_core.suspect_cells` picks the (LLM, cluster) cells of
the online evaluation that look worse than predicted; each suspect cell not asked again since it gained
``--recheck-new`` rated outcomes is asked again: :func:`router_core.recheck_plan` picks up to ``--recheck-prompts``
of the LLM's stored prompts in the cluster (validation first), the product's collector
(:func:`profiling.collector.run_collection`) asks them of the replay endpoint over HTTP into a DuckDB warehouse of
the seed's own (the cell's earlier answers archived first, as a re-profiling does), the answers are graded as the
dataset scores them (:class:`AnswerGrader`) and :func:`router_core.paired_change` compares them with the stored
scores prompt by prompt. A changed cell is an alarm naming the LLM and the cluster.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import Request, urlopen

import numpy as np
import polars as pl

import warehouse as wh
from benchmarks.routing_quality import Data, Split
from profiling.collector import run_collection
from router_core import UniRouter, online_evaluation, paired_change, recheck_plan, suspect_cells

if TYPE_CHECKING:
    from benchmarks.traffic_loop import Degradation

#: A cluster counts as degraded for the LLM when the LLM's true error on its post-change traffic there rose this much.
AFFECTED_RISE = 0.05

Cell = tuple[str, int]


def stored_answers(data: Data, split: Split, champion: UniRouter, x_test: np.ndarray) -> pl.DataFrame:
    """What a pipeline holds of each LLM of the champion's pool: its graded answers (the dataset's scores) to the
    validation and test prompts, each prompt in the champion's argmax cluster of its embedding (test prompts as the
    gateway embeds them). Columns ``llm, prompt_id, cluster, score, split, row`` (``row``: the prompt's row in
    ``data``); unanswered pairs left out."""
    parts = []
    for name, rows, x in (
        ("validation", split.validation, data.embeddings[split.validation]),
        ("test", split.test, x_test),
    ):
        clusters = champion.cluster_weights(x).argmax(axis=1)
        ids = data.prompts["prompt_id"].gather(rows).cast(pl.String)
        for llm in champion.llms_:
            scores = data.scores[rows, data.models.index(llm)]
            parts.append(
                pl.DataFrame(
                    {"llm": llm, "prompt_id": ids, "cluster": clusters.astype(np.int64), "score": scores}
                ).with_columns(split=pl.lit(name), row=pl.Series(rows, dtype=pl.Int64))
            )
    return pl.concat(parts).filter(pl.col("score").is_finite())


class AnswerGrader:
    """Grades an answer as the dataset scores it: the recorded score of the LLM whose recorded answer to the prompt
    it is (the LLM itself first; a substituted answer is another LLM's), as :meth:`Degradation.scores` does. The
    generic layout's answers (``(right answer)``/``(wrong answer)``) are recorded answers too."""

    def __init__(self, recorded: pl.DataFrame, data: Data) -> None:
        rows = {str(p): i for i, p in enumerate(data.prompts["prompt_id"].to_list())}
        self._own: dict[tuple[str, str], tuple[str, float]] = {}  # (model, prompt) -> (its answer, score)
        self._any: dict[tuple[str, str], float] = {}  # (prompt, answer) -> the first recording model's score
        for model, prompt_id, text in recorded.select("model", pl.col("prompt_id").cast(pl.String), "response").rows():
            if prompt_id not in rows or model not in data.models or text is None:
                continue
            score = float(data.scores[rows[prompt_id], data.models.index(model)])
            self._own[model, prompt_id] = (text, score)
            self._any.setdefault((prompt_id, text), score)

    def grade(self, llm: str, prompt_id: str, answer: str) -> float | None:
        """The answer's score; None when it is no recorded answer to the prompt."""
        text, score = self._own.get((llm, prompt_id), (None, None))
        return score if text == answer else self._any.get((prompt_id, answer))


@dataclass
class Rechecker:
    """Asks planned prompts of their LLM through the replay endpoint with the product's collector, into the DuckDB
    warehouse at ``path``, and grades the answers. ``sent``: ``prompt_id, prompt, messages`` as a client sends them;
    ``llms``: the catalog's rows (:func:`warehouse.load_catalog`)."""

    path: Path
    llms: pl.DataFrame
    sent: pl.DataFrame
    grader: AnswerGrader
    ungraded: int = 0

    def ask(self, plan: pl.DataFrame) -> pl.DataFrame:
        """``plan``'s rows (:func:`router_core.recheck_plan`) with ``score`` the new answer's (unanswered or ungraded
        prompts left out)."""
        pairs = plan.select(model="llm", prompt_id="prompt_id").join(self.sent, on="prompt_id", how="left")
        with wh.connect(self.path) as con:
            wh.archive_pairs(con, pairs, "rechecked")  # the cell's answers of an earlier check make way
            report = run_collection(con, pairs, self.llms, progress=False, seed=0)
            answers = wh.read_responses(con, models=plan["llm"].unique().to_list())
        answers = answers.filter(pl.col("run_id") == report.run_id)
        scores = [self.grader.grade(*row) for row in answers.select("model", "prompt_id", "response").rows()]
        graded = answers.select(llm="model", prompt_id="prompt_id").with_columns(
            new=pl.Series(scores, dtype=pl.Float64)
        )
        self.ungraded += int(graded["new"].is_null().sum()) + plan.height - graded.height
        new = plan.drop("score").join(graded.drop_nulls("new"), on=["llm", "prompt_id"])
        return new.rename({"new": "score"})


@dataclass
class Confirmation:
    """The two-stage check's record over one seed's checks."""

    checks: list[tuple[int, pl.DataFrame]] = field(default_factory=list)  #: (requests so far, cells confirmed)
    asked_before: int = 0  #: prompts asked again at checks up to the change
    asked_after: int = 0
    rechecks: list[str] = field(default_factory=list)  #: one line per cell asked again
    latest: dict[Cell, tuple[bool, pl.DataFrame]] = field(default_factory=dict)  #: cell -> (changed, new answers)
    latest_before: dict[Cell, tuple[bool, pl.DataFrame]] = field(default_factory=dict)  #: the same up to the change

    def recheck(
        self, upto: int, cells: list[Cell], stored: pl.DataFrame, rechecker: Rechecker, args: argparse.Namespace
    ) -> pl.DataFrame:
        """Ask ``cells``' planned prompts again at the check after ``upto`` requests; record and return
        :func:`router_core.paired_change`'s table."""
        wanted = pl.DataFrame({"llm": [c[0] for c in cells], "cluster": [c[1] for c in cells]})
        plan = recheck_plan(stored, wanted, args.recheck_prompts)
        new = rechecker.ask(plan)
        if upto <= args.before:
            self.asked_before += plan.height
        else:
            self.asked_after += plan.height
        tested = paired_change(stored, new, args.z)
        for row in tested.iter_rows(named=True):
            cell = (row["llm"], row["cluster"])
            self.latest[cell] = (
                row["changed"],
                new.filter((pl.col("llm") == cell[0]) & (pl.col("cluster") == cell[1])),
            )
            self.rechecks.append(f"at {upto}: {row['message']}{' CHANGED' if row['changed'] else ''}")
        return tested

    def reprofiled(self, before_change: bool = False) -> pl.DataFrame:
        """The new answers to validation prompts of the cells whose latest recheck (up to the change, with
        ``before_change``) found them changed (a confirmed cell is re-profiled): ``llm, cluster, prompt_id, row,
        score``."""
        latest = self.latest_before if before_change else self.latest
        parts = [
            answers.filter(pl.col("split") == "validation").select("llm", "cluster", "prompt_id", "row", "score")
            for (changed, answers) in latest.values()
            if changed
        ]
        columns = {"llm": pl.String, "cluster": pl.Int64, "prompt_id": pl.String, "row": pl.Int64, "score": pl.Float64}
        empty = pl.DataFrame(schema=columns)
        return pl.concat([empty, *parts])


def rated_counts(outcomes: pl.DataFrame, upto: int) -> dict[Cell, int]:
    """Rated outcomes per (LLM, argmax cluster) among the first ``upto`` requests."""
    seen = outcomes.filter(pl.col("index") < upto).select(
        "chosen_llm", pl.col("cluster_weights").list.arg_max().cast(pl.Int64).alias("cluster")
    )
    return {(llm, c): n for llm, c, n in seen.group_by("chosen_llm", "cluster").len().rows()}


def confirm_drift(
    tables: list[tuple[int, pl.DataFrame]],
    outcomes: pl.DataFrame,
    stored: pl.DataFrame,
    rechecker: Rechecker,
    args: argparse.Namespace,
    at_check: Callable[[int], None],
) -> Confirmation:
    """The two-stage check at every check of ``tables`` (requests so far, online evaluation by cluster):
    ``at_check(upto)`` puts the endpoint in the state it had at that check, then each suspect cell not asked again
    since it gained ``args.recheck_new`` rated outcomes is asked ``args.recheck_prompts`` stored prompts again. With
    ``args.recheck_llm``, the first confirmed cell of an LLM has its other cells asked again at once (a change rarely
    keeps to one cluster, and the others may have too little traffic to be suspected)."""
    out, asked_at, widened = Confirmation(), {}, set()
    for upto, table in tables:
        counts = rated_counts(outcomes, upto)
        suspects = suspect_cells(table, args.suspect_z, args.suspect_min_count)
        due = [
            (llm, c)
            for llm, c in suspects.select("llm", "cluster").rows()
            if (llm, c) not in asked_at or counts.get((llm, c), 0) - asked_at[llm, c] >= args.recheck_new
        ]
        confirmed = pl.DataFrame(schema={"llm": pl.String, "cluster": pl.Int64, "message": pl.String})
        while due:
            at_check(upto)
            tested = out.recheck(upto, due, stored, rechecker, args)
            asked_at.update({cell: counts.get(cell, 0) for cell in tested.select("llm", "cluster").rows()})
            confirmed = pl.concat([confirmed, tested.filter("changed").select(confirmed.columns)])
            llms = set(confirmed["llm"]) - widened if args.recheck_llm else set()
            widened |= llms
            cells = stored.filter(pl.col("llm").is_in(list(llms))).select("llm", "cluster").unique().rows()
            due = sorted(set(cells) - set(due))
        out.checks.append((upto, confirmed))
        if upto <= args.before:
            out.latest_before = dict(out.latest)
    return out


def replay_state(url: str, rule: dict, before: int) -> Callable[[int], None]:
    """``at_check(upto)`` for :func:`confirm_drift`: the replay endpoint's substitution ``rule`` (at ``url``, its
    ``/_replay/substitutions``) lifted at checks up to request ``before`` and in force after it. The endpoint is
    deterministic, so asked after the run it answers as it did at that check; the rule is in force at first."""
    state = {"on": True}

    def at_check(upto: int) -> None:
        if (on := upto > before) != state["on"]:
            post_json(url, rule if on else {}, "POST" if on else "DELETE")
            state["on"] = on

    return at_check


def first_alarm(checks: list[tuple[int, pl.DataFrame]], before: int, llm: str, affected: set[int]) -> tuple:
    """(checks up to ``before`` with an alarm, the first such as a line, requests after ``before`` until an alarm
    named ``llm`` in an ``affected`` cluster, its message, alarms after naming anything else) of (requests so far,
    alarms: ``llm, cluster, message``) checks."""
    early = [(upto, a) for upto, a in checks if upto <= before and a.height]
    detected, alarm, wrong = None, "", 0
    for upto, alarms in checks:
        if upto <= before:
            continue
        right = alarms.filter((pl.col("llm") == llm) & pl.col("cluster").is_in(list(affected)))
        wrong += alarms.height - right.height
        if right.height and detected is None:
            detected, alarm = upto - before, right["message"][0]
    return len(early), f"at {early[0][0]}: {early[0][1]['message'][0]}" if early else "", detected, alarm, wrong


def post_json(url: str, body: dict, method: str = "POST") -> dict:
    """``body`` (JSON, None values left out) to ``url`` with ``method``; the JSON answer."""
    body = {k: v for k, v in body.items() if v is not None}
    request = Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method=method)
    with urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def drift_checks(
    decisions: pl.DataFrame, outcomes: pl.DataFrame, validation: pl.DataFrame, args: argparse.Namespace, total: int
) -> list[tuple[int, pl.DataFrame]]:
    """(requests so far, online evaluation by cluster) at every ``args.check_every`` requests, on the outcomes of the
    last ``args.window``."""
    checks = []
    for upto in range(args.check_every, total + 1, args.check_every):
        rated = outcomes.filter(pl.col("index").is_between(upto - args.window, upto, closed="left"))
        routed = decisions.filter(pl.col("request_id").is_in(rated["request_id"].to_list()))
        checks.append((upto, online_evaluation(routed, rated.select("request_id", "score"), validation).by_cluster))
    return checks


def cell_line(row: dict) -> str:
    """One cell of an online evaluation, short."""
    return (
        f"cluster {row['cluster']}: {row['count']} rated, observed {row['observed_error']:.2f} vs predicted "
        f"{row['predicted_error']:.2f}, z {row['z']:.1f}"
    )


def affected_clusters(
    decisions: pl.DataFrame, rows: list[int], before: int, data: Data, change: Degradation
) -> set[int]:
    """Clusters in which the degraded LLM's true error on its post-change traffic rose by >= :data:`AFFECTED_RISE`
    (``rows``: each request's row in ``data``; ``index``: the decision's request)."""
    column, served = data.models.index(change.llm), data.models.index(change.served_by)
    rise = data.scores[:, column] - data.scores[:, served]
    hit = (data.prompts["category"] == change.category).to_numpy()
    after = decisions.filter(
        (pl.col("index") >= before) & (pl.col("chosen_llm") == change.llm) & pl.col("cluster_weights").is_not_null()
    )
    index = after["index"].to_numpy()
    rows_after = np.asarray(rows)[index]
    frame = pl.DataFrame(
        {"cluster": after["cluster_weights"].list.arg_max(), "rise": np.where(hit[rows_after], rise[rows_after], 0.0)}
    )
    cells = frame.group_by("cluster").agg(pl.col("rise").mean())
    return set(cells.filter(pl.col("rise") >= AFFECTED_RISE)["cluster"].to_list())
