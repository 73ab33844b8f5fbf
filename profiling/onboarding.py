"""A new LLM's onboarding: which validation prompts its first profiling run asks (the first ``fraction`` of
:class:`router_core.onboarding.OnboardingPlanner`'s order, fitted on the fully profiled LLMs' errors and the current
cluster map), what a run is estimated to cost before it asks anything, and the budget it may spend.

An LLM is new to onboarding when none of its validation prompts is answered (stored or staged; a re-pointed LLM, its
answers archived, is new again): its first run asks the chosen fraction of them, and every prompt of the other
splits (test prompts score the router versions, so the gate needs them all). Any later run (the nightly schedule,
a re-run) asks the rest, so the profile refines until it is full. A fraction of 1.0 asks everything at once, as
before onboarding plans existed. Each run's plan is stored (``warehouse.record_onboarding_plan``): the data checks,
the features and the router read whether a profile is partial from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl

import warehouse as wh
from profiling.budget import SpendLimit, request_tokens, worst_case_usd
from profiling.collector import request_of
from router_core import error_matrix, load_cluster_map
from router_core.onboarding import DEFAULT_ONBOARDING_FRACTION, OnboardingPlanner

__all__ = [
    "DEFAULT_ONBOARDING_FRACTION",
    "CostEstimate",
    "OnboardingPlan",
    "check_fraction",
    "estimate_cost",
    "estimate_onboarding",
    "known_validation_errors",
    "plan_onboarding",
    "validation_order",
]


def check_fraction(fraction: float) -> float:
    """``fraction`` if in (0, 1], else a ValueError naming it."""
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        raise ValueError(f"onboarding.fraction={fraction!r}: must be in (0, 1] (1.0: every validation prompt)")
    return float(fraction)


@dataclass(frozen=True)
class CostEstimate:
    """What asking ``prompts`` pairs of one LLM is estimated to take (:func:`estimate_cost`): tokens at the
    collector's estimate (``profiling.budget.request_tokens``) and USD at the catalog's prices (None: unpriced)."""

    model: str
    prompts: int
    validation_prompts: int
    prompt_tokens: int
    completion_tokens: int
    usd: float | None

    def line(self) -> str:
        usd = "unpriced" if self.usd is None else f"${self.usd:.4f}"
        return (
            f"{self.model}: {self.prompts} prompts ({self.validation_prompts} validation), {self.prompt_tokens} prompt "
            f"+ at most {self.completion_tokens} completion tokens, at most {usd}"
        )

    def tags(self) -> dict[str, str]:
        """The estimate as Dagster run tags."""
        return {
            "uniroute/estimate_prompts": str(self.prompts),
            "uniroute/estimate_tokens": str(self.prompt_tokens + self.completion_tokens),
            "uniroute/estimate_usd": "unpriced" if self.usd is None else f"{self.usd:.4f}",
        }


def estimate_cost(model: str, pairs: pl.DataFrame, llm: dict, validation_ids: set[str]) -> CostEstimate:
    """The estimate of asking ``pairs`` (prompt, messages, request_params of ``model``'s pairs) of the catalog row
    ``llm``: each request's worst case as the budget reserves it (``profiling.budget.worst_case_usd``)."""
    mine = pairs.filter(pl.col("model") == model) if "model" in pairs.columns else pairs
    prompt_tokens = completion_tokens = 0
    usd: float | None = 0.0
    prices = (llm.get("usd_per_mtok_in"), llm.get("usd_per_mtok_out"), llm.get("usd_per_query"))
    for prompt, messages_json, params_json in mine.select("prompt", "messages", "request_params").iter_rows():
        messages, params = request_of(prompt, messages_json, params_json)
        tokens = request_tokens(messages, params)
        prompt_tokens, completion_tokens = prompt_tokens + tokens[0], completion_tokens + tokens[1]
        cost = worst_case_usd(messages, params, *prices)
        usd = None if usd is None or cost is None else usd + cost
    asked_validation = sum(1 for p in mine["prompt_id"] if p in validation_ids)
    return CostEstimate(model, mine.height, asked_validation, prompt_tokens, completion_tokens, usd)


def known_validation_errors(
    con: duckdb.DuckDBPyConnection, ids: Sequence[str], cluster_map_version: str, exclude: str
) -> np.ndarray:
    """(n, M) errors on the validation prompts ``ids`` of the LLMs with a full profile and features for the map
    (passing data checks; not ``exclude``): what the planner and the partial-profile estimator learn from. An LLM
    with no graded answer on ``ids`` (re-profiled, its answers archived, none asked again yet) is not one, whatever
    features it kept."""
    failing = set(wh.failing_llms(con))
    partial = set(wh.read_profiles(con).filter("partial")["model"])
    with_features = wh.read_llm_features(con, cluster_map_version)["model"].to_list()
    candidates = [m for m in with_features if m != exclude and m not in failing | partial]
    outcomes = wh.read_outcomes(con, candidates, ["validation"]).filter(pl.col("prompt_id").is_in(list(ids)))
    answered = set(outcomes["model"])
    known = [m for m in candidates if m in answered]
    return error_matrix(outcomes, list(ids), known)


def validation_order(con: duckdb.DuckDBPyConnection, model: str) -> list[str] | None:
    """The validation prompt ids in the order a new ``model`` is to be asked them, the first first; None when
    there is nothing to plan from (no cluster map yet, or no fully profiled LLM)."""
    latest = wh.latest_cluster_map(con)
    if latest is None:
        return None
    ids, x = wh.read_prompt_vectors(con, latest["embedder_id"], ["validation"])
    errors = known_validation_errors(con, ids, latest["version"], model)
    if not ids or errors.shape[1] == 0:
        return None
    weights = load_cluster_map(latest["path"]).transform(x)
    planner = OnboardingPlanner().fit(weights, errors)
    first = planner.next_prompts(np.empty(0, dtype=np.int64), np.empty(0), len(ids))
    return [ids[i] for i in first]


@dataclass(frozen=True)
class OnboardingPlan:
    """A profiling run's pairs after onboarding (:func:`plan_onboarding`), each LLM's cost estimate, and the
    budget left to this run per LLM (None: no budget)."""

    pairs: pl.DataFrame
    estimates: dict[str, CostEstimate]
    budget: SpendLimit | None


def plan_onboarding(
    warehouse: wh.Opener,
    llms: pl.DataFrame,
    pairs: pl.DataFrame,
    fraction: float = DEFAULT_ONBOARDING_FRACTION,
    budget_usd: float | None = None,
    log: Callable[[str], None] | None = None,
    record: bool = True,
) -> OnboardingPlan:
    """The pairs of ``pairs`` (``profiling.staging.plan_collection``) that the LLMs of ``llms`` are asked: a new
    LLM only the first ``fraction`` of its validation prompts (see the module's docstring); the estimate of each
    LLM's run; and, with ``budget_usd`` (USD per LLM for its profile, what its stored answers cost counting), the
    :class:`~profiling.budget.SpendLimit` of what is left. ``record``: store each LLM's plan (a dry run does not)."""
    fraction = check_fraction(fraction)
    if budget_usd is not None and not (isinstance(budget_usd, int | float) and 0 <= budget_usd < math.inf):
        raise ValueError(f"onboarding.budget_usd={budget_usd!r}: must be a finite number of USD >= 0")
    kept, estimates, left, plans = [], {}, {}, []
    with wh.opened(warehouse) as con:
        validation = set(wh.read_prompts(con, splits=["validation"])["prompt_id"])
        profiles = {row["model"]: row for row in wh.read_profiles(con, llms["name"].to_list()).iter_rows(named=True)}
        for llm in llms.iter_rows(named=True):
            model, profile = llm["name"], profiles.get(llm["name"])
            total = profile["total"] if profile else None
            mine, target, estimates[model] = _plan_one(con, llm, pairs, validation, total, fraction, log)
            kept.append(mine)
            if budget_usd is not None:
                left[model] = max(budget_usd - (profile["onboarding_usd"] if profile else 0.0), 0.0)
            plans.append((model, target, max(total or 0, target), fraction, budget_usd, estimates[model].usd))
        if record and plans:
            columns = ["model", "target", "total", "fraction", "budget_usd", "estimate_usd"]
            wh.record_onboarding_plan(con, pl.DataFrame(plans, schema=columns, orient="row"))
    chosen = pl.concat(kept) if kept else pairs.clear()
    return OnboardingPlan(chosen, estimates, SpendLimit(left) if budget_usd is not None else None)


def estimate_onboarding(
    con: duckdb.DuckDBPyConnection, llm: dict, splits: Sequence[str], fraction: float = DEFAULT_ONBOARDING_FRACTION
) -> CostEstimate:
    """What profiling the catalog entry ``llm`` from nothing would ask and cost (a new LLM, or a re-pointed one whose
    answers are all asked again): every collectable prompt of ``splits``, its validation prompts limited to the
    first ``fraction``. Only reads the warehouse; the LLM need not be synced into it."""
    prompts = wh.collectable_prompts(con, splits).with_columns(model=pl.lit(llm["name"]))
    validation = set(prompts.filter(pl.col("split") == "validation")["prompt_id"])
    return _plan_one(con, llm, prompts, validation, None, check_fraction(fraction), None)[2]


def _plan_one(
    con: duckdb.DuckDBPyConnection,
    llm: dict,
    pairs: pl.DataFrame,
    validation: set[str],
    total: int | None,
    fraction: float,
    log: Callable[[str], None] | None,
) -> tuple[pl.DataFrame, int, CostEstimate]:
    """One LLM's pairs of ``pairs`` to ask, the validation prompts it should have answered after the run, and the
    run's estimate; ``total``: validation prompts expected of it (None: those pending, an LLM not synced yet)."""
    model = llm["name"]
    mine = pairs.filter(pl.col("model") == model)
    if total is None:
        total = sum(1 for p in mine["prompt_id"] if p in validation)
    mine, target = _first_fraction(con, model, mine, validation, total, fraction, log)
    return mine, target, estimate_cost(model, mine, llm, validation)


def _first_fraction(
    con: duckdb.DuckDBPyConnection,
    model: str,
    pairs: pl.DataFrame,
    validation: set[str],
    total: int,
    fraction: float,
    log: Callable[[str], None] | None,
) -> tuple[pl.DataFrame, int]:
    """``model``'s pairs with, for a new LLM, only the first ``fraction`` of its validation prompts; and how many
    validation prompts it should have answered after the run (its plan's target)."""
    pending = [p for p in pairs["prompt_id"] if p in validation]
    if fraction >= 1 or total == 0 or len(pending) < total:  # everything, or a refinement: the rest
        return pairs, total
    order = validation_order(con, model)
    if order is None:
        if log:
            log(f"{model}: no cluster map or fully profiled LLM to plan from: asking every validation prompt")
        return pairs, total
    target = max(1, math.ceil(fraction * total))
    pending_set = set(pending)
    chosen = [p for p in order if p in pending_set][:target]
    chosen += [p for p in pending if p not in set(order)][: target - len(chosen)]  # prompts the map has no vector of
    keep = pl.col("prompt_id").is_in(chosen) | ~pl.col("prompt_id").is_in(list(validation))
    if log:
        log(f"{model}: new LLM, asking {len(chosen)} of {total} validation prompts (onboarding.fraction={fraction})")
    return pairs.filter(keep), len(chosen)
