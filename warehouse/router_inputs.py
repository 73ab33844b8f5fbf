"""What a router version is built from, read in one call (:func:`read_router_inputs`): the current cluster map,
the pool (active catalog LLMs with features for that map, passing data checks, with a cost), and the validation
and test prompts' vectors, outcomes and costs."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl

import warehouse as wh  # the package's public readers (resolved when called: this module is part of it)


class RouterInputsError(ValueError):
    """Nothing to build a router from: no cluster map, one fitted on another embedder's vectors, or no LLM left in
    the pool. The message says what to materialise or configure."""


@dataclass(frozen=True)
class RouterInputs:
    """A router version's inputs: the current ``cluster_map`` (its warehouse row), the ``pool``, the LLMs left out
    (``checks``: failing data checks, ``model, check_name, message``; ``unpriced``: no cost on validation), each
    LLM's stored features (``stored_psi``) and mean validation cost (``costs``, USD per query), the prompts
    (``validation``/``test`` ids and vectors, outcomes ``prompt_id, model, score``, per-answer test costs), the
    validation and test prompts' datasets (``prompts``), each pool LLM's cost basis and each LLM's profile."""

    cluster_map: dict
    pool: list[str]
    checks: pl.DataFrame
    unpriced: list[str]
    stored_psi: dict[str, np.ndarray]
    costs: dict[str, float]
    val_ids: list[str]
    x_val: np.ndarray
    val_outcomes: pl.DataFrame
    test_ids: list[str]
    x_test: np.ndarray
    test_outcomes: pl.DataFrame
    test_query_costs: pl.DataFrame
    prompts: pl.DataFrame
    cost_basis: dict[str, str]
    #: Each catalog LLM's profile (``warehouse.read_profiles``: answered of total, partial, onboarding USD).
    profiles: pl.DataFrame | None = None

    def partial_profiles(self) -> dict[str, tuple[int, int]]:
        """The pool's LLMs with a partial profile: (validation prompts answered, expected), in pool order."""
        if self.profiles is None:
            return {}
        rows = {r["model"]: r for r in self.profiles.filter("partial").iter_rows(named=True)}
        return {m: (rows[m]["answered"], rows[m]["total"]) for m in self.pool if m in rows}

    def notes(self) -> list[str]:
        """Warnings about LLMs left out of the pool, one line each."""
        failing = sorted(set(self.checks["model"]))
        return [
            *([f"left out of the pool, their data checks fail: {failing}"] if failing else []),
            *(
                [f"left out of the pool, no cost on validation (prices or per-query USD): {self.unpriced}"]
                if self.unpriced
                else []
            ),
        ]


def read_router_inputs(con: duckdb.DuckDBPyConnection, embedder_id: str, pool: list[str] | None = None) -> RouterInputs:
    """The inputs of a router over ``pool`` (default: every LLM with features for the current map) on vectors of
    ``embedder_id``: only LLMs active in the catalog, whose data checks pass, with a cost on validation.
    :class:`RouterInputsError` when there is no map, the map was fitted on another embedder, or no LLM is left."""
    latest = wh.latest_cluster_map(con)
    if latest is None:
        raise RouterInputsError("no cluster map yet: materialise cluster_map first")
    if latest["embedder_id"] != embedder_id:
        raise RouterInputsError(
            f"cluster map {latest['version']} was fitted on vectors of {latest['embedder_id']}, but the embedder "
            f"resource is {embedder_id}: refit the map (cluster_map) or configure that embedder"
        )
    checks = wh.read_failing_checks(con)
    failing = set(checks["model"])
    features = wh.read_llm_features(con, latest["version"])
    stored_psi = {m: np.asarray(p) for m, p in features.select("model", "psi").iter_rows()}
    active = set(wh.read_llms(con, active_only=True)["name"])
    costs = {m: c for m, c, _ in wh.read_costs(con).iter_rows() if c is not None}
    candidates = [m for m in (pool or sorted(stored_psi)) if m in active and m not in failing]
    priced = [m for m in candidates if m in costs]
    if not priced:
        raise RouterInputsError(f"no LLM to route among: features {sorted(stored_psi)}, failing {sorted(failing)}")
    val_ids, x_val = wh.read_prompt_vectors(con, latest["embedder_id"], ["validation"])
    test_ids, x_test = wh.read_prompt_vectors(con, latest["embedder_id"], ["test"])
    return RouterInputs(
        cluster_map=latest,
        pool=priced,
        checks=checks,
        unpriced=[m for m in candidates if m not in costs],
        stored_psi=stored_psi,
        costs=costs,
        val_ids=val_ids,
        x_val=x_val,
        val_outcomes=wh.read_outcomes(con, priced, ["validation"]),
        test_ids=test_ids,
        x_test=x_test,
        test_outcomes=wh.read_outcomes(con, priced, ["test"]),
        test_query_costs=wh.read_query_costs(con, priced, ["test"]),
        prompts=wh.read_prompts(con, splits=["validation", "test"]).select("prompt_id", "dataset", "split"),
        cost_basis={m: b or "" for m, b in wh.read_cost_basis(con, priced).iter_rows()},
        profiles=wh.read_profiles(con),
    )
