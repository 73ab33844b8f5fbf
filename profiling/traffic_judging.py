"""Judging sampled traffic: a catalog LLM (the ``llm_judge`` grader with a reference-free rubric) scores stored
answers of routed requests, under a USD/day cap that is never passed.

Before each call its worst case is reserved in the warehouse's ``judge_spend`` ledger (the rubric prompt's UTF-8
bytes as prompt tokens, as no tokenizer yields more tokens than bytes, plus the chat template's overhead, and
``max_tokens`` answer tokens, at the catalog's prices; or its price per query): a call is made only when what the
UTC day already spent or reserved plus its worst case stays within the cap, and judging stops at the first call that
could pass it. After the call the ledger records what it cost. A judge call is made once (no retries, which could
each be billed); a failed one counts at its worst case and its request is judged on a later run. Verdicts go through
the judge cache shared with profiling (``judge_cache``): a request whose prompt and answer were judged before costs
nothing. This assumes the endpoint honours ``max_tokens`` and bills the tokens it reports.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

import polars as pl

import warehouse as wh
from profiling.graders import CompleteFn, GradeContext, GradeItem, GradeResult, get_grader
from profiling.graders._judge import LLMJudgeGrader, judge_cache_key
from profiling.grading import WarehouseJudgeCache

__all__ = ["TRAFFIC_RUBRIC", "JudgingReport", "judge_traffic", "worst_case_usd"]

TRAFFIC_RUBRIC = """\
You are grading an assistant's answer to a user's request. There is no reference answer: judge from the request \
alone whether the answer is correct, complete and helpful.

Request:
{prompt}

Answer to grade:
{response}

Explain your judgement in a few sentences, then end with a final line of exactly this form, with a number from 0 \
(wrong or useless) to {scale} (fully correct and helpful):
Score: <number>"""
#: Tokens a chat template may add around one user message (role markers, separators), on top of its text.
CHAT_OVERHEAD_TOKENS = 32
#: Judge calls reserved and made together.
BATCH = 16


@dataclass
class JudgingReport:
    """What a judging run did."""

    judge: str
    usd_per_day: float
    #: Sampled requests with an answer not judged yet by this judge and rubric.
    candidates: int = 0
    #: Of them, picked by the sample rate and the maximum per run.
    selected: int = 0
    #: Verdicts taken from the judge cache: nothing paid.
    cached: int = 0
    #: Judge calls made.
    calls: int = 0
    #: Verdicts stored (cached ones included).
    judged: int = 0
    #: Calls that failed or gave no readable score (their requests are tried again on a later run).
    failed: int = 0
    #: Selected requests left unjudged because the next call could pass the cap.
    stopped_by_cap: int = 0
    #: Paid by this run's calls (failed ones at their worst case).
    spent_usd: float = 0.0
    #: Spent (or reserved) by every run of this UTC day, this one included.
    spent_today_usd: float = 0.0


def worst_case_usd(llm: dict, prompt: str, max_tokens: int) -> float:
    """The most one call of ``llm`` (a catalog row) asking ``prompt`` with ``max_tokens`` can cost: UTF-8 bytes as
    prompt tokens plus :data:`CHAT_OVERHEAD_TOKENS`, ``max_tokens`` answer tokens, at its per-token prices; else its
    price per query. An LLM with neither cannot be capped: ``ValueError`` naming it."""
    usd_in, usd_out, per_query = llm.get("usd_per_mtok_in"), llm.get("usd_per_mtok_out"), llm.get("usd_per_query")
    if usd_in is not None and usd_out is not None:
        tokens_in = len(prompt.encode("utf-8")) + CHAT_OVERHEAD_TOKENS
        return (tokens_in * usd_in + max_tokens * usd_out) / 1e6
    if per_query is not None:
        return float(per_query)
    raise ValueError(f"judge={llm.get('name')!r}: has no price in the catalog, so its spend cannot be capped")


def _picked(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` is in the judged sample at ``rate``: a hash, so every run picks the same requests."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def _request_text(messages: str | None, prompt: str | None) -> str:
    """What the user asked, for the judge: the request's messages as ``role: content`` lines, else the prompt."""
    try:
        parsed = json.loads(messages) if messages else None
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
        return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content') or ''}" for m in parsed)
    return prompt or ""


def judge_traffic(
    warehouse: wh.Opener,
    judge: str,
    complete: CompleteFn,
    usd_per_day: float,
    *,
    sample_rate: float = 1.0,
    max_per_run: int = 200,
    rubric: str = TRAFFIC_RUBRIC,
    max_tokens: int = 512,
    now: datetime | None = None,
) -> JudgingReport:
    """Judge the sampled requests not judged yet by ``judge`` with ``rubric`` (a share ``sample_rate`` of them, at
    most ``max_per_run``, oldest first), storing verdicts in ``traffic_judgements`` and each call's cost in
    ``judge_spend``, never passing ``usd_per_day`` over the UTC day (module docstring). ``complete`` calls the judge
    (:func:`profiling.completion.catalog_completer`, with no retries)."""
    if not 0 <= sample_rate <= 1:
        raise ValueError(f"judge_sample_rate: expected a number in [0, 1], got {sample_rate!r}")
    if isinstance(max_per_run, bool) or not isinstance(max_per_run, int) or max_per_run < 0:
        raise ValueError(f"judge_max_per_run: expected an integer >= 0, got {max_per_run!r}")
    grader = get_grader("llm_judge", {"judge": judge, "rubric": rubric, "max_tokens": max_tokens})
    with wh.opened(warehouse) as con:
        llms = wh.read_llms(con)
        todo = wh.read_unjudged_samples(con, judge, grader.version)
    rows = llms.filter(pl.col("name") == judge)
    if rows.height == 0:
        raise ValueError(f"judge={judge!r}: not in the catalog")
    llm = rows.row(0, named=True)
    report = JudgingReport(judge=judge, usd_per_day=usd_per_day, candidates=todo.height)
    todo = todo.filter(pl.col("request_id").map_elements(lambda r: _picked(r, sample_rate), pl.Boolean))
    todo = todo.head(max_per_run)
    report.selected = todo.height
    items = {
        r["request_id"]: GradeItem(r["answer"], None, _request_text(r["messages"], r["prompt"]))
        for r in todo.iter_rows(named=True)
    }
    model_ids = {judge: llm["model_id"] or ""}
    keys = {rid: judge_cache_key(judge, model_ids[judge], grader.version, item) for rid, item in items.items()}
    cache = WarehouseJudgeCache(warehouse)
    cached = cache.get(list(dict.fromkeys(keys.values()))) if keys else {}
    verdicts = [_verdict(rid, grader, cached[keys[rid]], 0.0, True) for rid in items if keys[rid] in cached]
    report.cached = len(verdicts)
    by_key: dict[str, list[str]] = {}
    for rid in items:
        if keys[rid] not in cached:
            by_key.setdefault(keys[rid], []).append(rid)
    pending = list(by_key)
    context = GradeContext(complete, cache, model_ids)
    for start in range(0, len(pending), BATCH):
        chunk = {key: by_key[key] for key in pending[start : start + BATCH]}
        reserved, done = _judge_batch(warehouse, grader, llm, context, chunk, items, report, now)
        verdicts += done
        if reserved < len(chunk):  # the next call could pass the cap: stop for today
            report.stopped_by_cap = sum(len(by_key[key]) for key in pending[start + reserved :])
            break
    with wh.opened(warehouse) as con:
        if verdicts:
            report.judged = wh.insert_traffic_judgements(con, pl.DataFrame(verdicts))
        report.spent_today_usd = wh.judge_spend_on(con, wh.utc_day(now))
    return report


def _judge_batch(
    warehouse: wh.Opener,
    grader: LLMJudgeGrader,
    llm: dict,
    context: GradeContext,
    chunk: dict[str, list[str]],
    items: dict[str, GradeItem],
    report: JudgingReport,
    now: datetime | None,
) -> tuple[int, list[dict]]:
    """Reserve the worst case of one call per cache key of ``chunk`` (key -> its request ids), make the calls that
    fit under the cap together, settle them; returns how many were reserved and the verdict rows."""
    first = [rids[0] for rids in chunk.values()]
    worst = [worst_case_usd(llm, grader.render(items[rid]), grader.max_tokens) for rid in first]
    calls = pl.DataFrame({"request_id": first, "reserved_usd": worst}, schema_overrides={"reserved_usd": pl.Float64})
    with wh.opened(warehouse) as con:
        reserved = wh.reserve_judge_spend(con, grader.judge, calls, report.usd_per_day, now)
    if reserved.height == 0:
        return 0, []
    keys = list(chunk)[: reserved.height]  # the reservation is a prefix of the calls
    results: list[GradeResult] = grader.grade_items([items[chunk[key][0]] for key in keys], context)
    settled, verdicts = [], []
    for key, spend_id, result, bound in zip(keys, reserved["spend_id"], results, worst, strict=False):
        answered = result.detail is not None or result.cached  # a verdict came back (readable or not)
        cost = 0.0 if result.cached else _cost(result, llm, bound)
        settled.append({"spend_id": spend_id, "cost_usd": cost, "status": "paid" if answered else "failed"})
        report.calls += not result.cached
        report.spent_usd += cost if answered else bound
        if result.score is None:
            report.failed += 1
            continue
        row = {"judge": result.judge, "score": result.score}
        verdicts += [_verdict(rid, grader, row, cost if i == 0 else 0.0, i > 0) for i, rid in enumerate(chunk[key])]
    with wh.opened(warehouse) as con:
        wh.settle_judge_spend(con, pl.DataFrame(settled, schema_overrides={"cost_usd": pl.Float64}))
    return reserved.height, verdicts


def _cost(result: GradeResult, llm: dict, bound: float) -> float:
    """What an answered call cost: as the collector priced it, else the price per query, else its worst case."""
    if result.judge_cost_usd is not None:
        return float(result.judge_cost_usd)
    return float(llm["usd_per_query"]) if llm.get("usd_per_query") is not None else bound


def _verdict(request_id: str, grader: LLMJudgeGrader, row: dict, cost: float, cached: bool) -> dict:
    """A ``traffic_judgements`` row from a verdict (a judge cache row or a fresh one)."""
    return {
        "request_id": request_id,
        "judge": grader.judge,
        "grader_version": grader.version,
        "score": row["score"],
        "judged_by": row["judge"],
        "cost_usd": cost,
        "cached": cached,
    }
