"""Each LLM's onboarding plan (``onboarding_plans``: a partial profile first, the rest later) and what its profile
holds: validation prompts answered of those expected, and what its answers cost."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

from warehouse._tables import _query, _write
from warehouse.responses import _EXPECTED, expected_count


def record_onboarding_plan(con: duckdb.DuckDBPyConnection, plans: pl.DataFrame) -> int:
    """Store each LLM's plan (``model, target, total, fraction, budget_usd, estimate_usd``), replacing its last."""
    columns = ("target", "total", "fraction", "budget_usd", "estimate_usd", "planned_at")
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return _write(con, "onboarding_plans", plans, f"ON CONFLICT (model) DO UPDATE SET {updates}", stamp="planned_at")


def read_profiles(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None) -> pl.DataFrame:
    """Per catalog LLM (of ``models``, default all): ``answered`` validation prompts of the ``total`` expected of it,
    the ``target`` its plan has it answer (``total`` without a plan), ``partial`` (a plan short of the total: its
    features come from :class:`router_core.PartialProfileEstimator`) and ``onboarding_usd`` (what its stored answers
    of every split cost; a re-profiling starts again from 0)."""
    return _query(
        con,
        f"""
        WITH expected AS (
            SELECT l.name AS model, count(p.prompt_id) AS total
            FROM llms l LEFT JOIN prompts p ON p.split = 'validation' AND {_EXPECTED}
            WHERE ? IS NULL OR list_contains(?, l.name)
            GROUP BY l.name
        )
        SELECT e.model,
               (SELECT count(*) FROM responses r JOIN prompts p USING (prompt_id)
                WHERE r.model = e.model AND p.split = 'validation') AS answered,
               e.total,
               least(coalesce(o.target, e.total), e.total) AS target,
               coalesce(o.target < e.total, false) AS partial,
               coalesce((SELECT sum(r.cost_usd) FROM responses r WHERE r.model = e.model), 0.0) AS onboarding_usd
        FROM expected e LEFT JOIN onboarding_plans o ON o.model = e.model
        ORDER BY e.model
        """,
        [None if models is None else list(models), None if models is None else list(models)],
    )


def profile_target(con: duckdb.DuckDBPyConnection, model: str) -> int:
    """How many validation prompts ``model`` should have answered (its coverage's denominator): its partial plan's
    target, else every prompt expected of it (:func:`warehouse.expected_count`)."""
    plan = _query(con, "SELECT target FROM onboarding_plans WHERE model = ?", [model])
    total = expected_count(con, model, ["validation"])
    return min(plan["target"][0], total) if plan.height else total


def settle_onboarding_target(con: duckdb.DuckDBPyConnection, model: str) -> int:
    """After a run stopped at ``model``'s budget: its plan's target becomes the validation prompts it has answered
    (a partial profile, refined when a later run may spend more). Returns the target."""
    con.execute(
        """
        UPDATE onboarding_plans SET target = least(target, (
            SELECT count(*) FROM responses r JOIN prompts p USING (prompt_id)
            WHERE r.model = ? AND p.split = 'validation'))
        WHERE model = ?
        """,
        [model, model],
    )
    return profile_target(con, model)


def collectable_prompts(con: duckdb.DuckDBPyConnection, splits: Sequence[str]) -> pl.DataFrame:
    """The prompts of ``splits`` an LLM with an endpoint can be asked (their dataset is collectable): prompt_id,
    split, prompt, messages, request_params; what a new LLM's profile asks."""
    return _query(
        con,
        """
        SELECT p.prompt_id, p.split, p.prompt, p.messages, p.request_params FROM prompts p
        WHERE list_contains(?, p.split)
          AND coalesce((SELECT d.collectable FROM datasets d WHERE d.name = p.dataset), true)
        ORDER BY p.prompt_id
        """,
        [list(splits)],
    )
