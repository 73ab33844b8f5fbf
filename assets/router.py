"""The router: cluster map + Psi + costs of the pool, evaluated on test prompts, registered in MLflow."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import dagster as dg
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

import warehouse as wh
from assets import automation
from assets.metadata import fingerprint, markdown_image
from assets.resources import ArtifactsResource, EmbedderResource, MlflowResource, WarehouseResource
from assets.routing import cluster_map, llm_error_features
from router_core import (
    UniRouter,
    ZeroRouter,
    error_matrix,
    evaluate_router,
    load_cluster_map,
    out_of_fold_errors,
    plot_deferral_curves,
    plot_psi_heatmap,
    save_router,
    single_llm_points,
    value_matrix,
)
from serving import registry

GROUP = "routing"


class RouterConfig(dg.Config):
    """The pool (default: every active catalog LLM with features for the current map) and the serving default."""

    pool: list[str] | None = None
    default_cost_weight: float = 0.0


@dg.asset(
    group_name=GROUP, deps=[cluster_map, llm_error_features], pool="duckdb", automation_condition=automation.ROUTER
)
def router(
    context: dg.AssetExecutionContext,
    config: RouterConfig,
    warehouse: WarehouseResource,
    embedder: EmbedderResource,
    artifacts: ArtifactsResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """A new registered router version; alias ``champion`` moves only if its test AUDC is not worse than the
    current champion's on the same test prompts (else ``challenger``)."""
    emb = embedder.embedder()
    with warehouse.connect() as con:
        latest = wh.latest_cluster_map(con)
        if latest is None:
            raise dg.Failure("no cluster map yet: materialise cluster_map first")
        if latest["embedder_id"] != emb.embedder_id:
            raise dg.Failure(
                f"cluster map {latest['version']} was fitted on vectors of {latest['embedder_id']}, but the embedder "
                f"resource is {emb.embedder_id}: refit the map (cluster_map) or configure that embedder"
            )
        failing = set(wh.failing_llms(con))
        features = wh.read_llm_features(con, latest["version"])
        stored_psi = {m: np.asarray(p) for m, p in features.select("model", "psi").iter_rows()}
        active = set(wh.read_llms(con, active_only=True)["name"])
        costs = {m: c for m, c, _ in wh.read_costs(con).iter_rows() if c is not None}
        # only LLMs active in the catalog, with features for this map, whose data checks pass, with a cost
        candidates = [m for m in (config.pool or sorted(stored_psi)) if m in active and m not in failing]
        if failing:
            context.log.warning(f"left out of the pool, their data checks fail: {sorted(failing)}")
        if unpriced := [m for m in candidates if m not in costs]:
            context.log.warning(f"left out of the pool, no cost on validation (prices or per-query USD): {unpriced}")
        pool = [m for m in candidates if m in costs]
        if not pool:
            raise dg.Failure(f"no LLM to route among: features {sorted(stored_psi)}, failing {sorted(failing)}")
        val_ids, x_val = wh.read_prompt_vectors(con, latest["embedder_id"], ["validation"])
        test_ids, x_test = wh.read_prompt_vectors(con, latest["embedder_id"], ["test"])
        val_errors = error_matrix(wh.read_outcomes(con, pool, ["validation"]), val_ids, pool)
        test_scores = 1 - error_matrix(wh.read_outcomes(con, pool, ["test"]), test_ids, pool)
        test_costs = value_matrix(wh.read_query_costs(con, pool, ["test"]), test_ids, pool, "cost")
    complete = ~np.isnan(test_scores).any(axis=1)
    if not complete.any():
        raise dg.Failure(f"no test prompt answered by the whole pool {pool}: profile the pool on the test split")
    x_test, test_scores = x_test[complete], test_scores[complete]
    cost = np.array([costs[m] for m in pool])
    # each test answer's own cost where the data has it, else the LLM's mean validation cost
    realised = np.where(np.isnan(test_costs[complete]), cost, test_costs[complete])
    uni = UniRouter(load_cluster_map(latest["path"])).fit_arrays(x_val, val_errors, pool, cost, val_ids)
    _check_one_psi(uni, stored_psi)
    zero = ZeroRouter().fit_arrays(x_val, val_errors, pool, cost, val_ids)
    audc, qnc, curve = evaluate_router(uni, x_test, test_scores, realised)
    zero_audc, _, zero_curve = evaluate_router(zero, x_test, test_scores, realised)
    llm_cost, llm_acc = single_llm_points(test_scores, cost, realised)
    seen = [m for m in pool if m in set(latest["training_llms"])]
    unseen = [m for m in pool if m not in seen]
    figures = {
        "deferral_curve.png": plot_deferral_curves(
            {"UniRoute": curve, "ZeroRouter": zero_curve},
            single_llms=pl.DataFrame({"cost": llm_cost, "accuracy": llm_acc}),
            cost_range=(llm_cost.min(), llm_cost.max()) if llm_cost.max() > llm_cost.min() else None,
            cost_label="average cost per prompt (USD)",
        ),
        "psi_heatmap.png": plot_psi_heatmap(uni.psi_, uni.llms_),
    }
    run_dir = artifacts.path("routers", context.run.run_id)
    save_router(uni, run_dir)
    # budgets (max cost per query, min accuracy) resolve on the pool's validation curve, cross-fitted so that it
    # describes prompts the router has not seen
    answered = ~np.isnan(val_errors).any(axis=1)
    predicted = out_of_fold_errors(uni, x_val, val_errors)[answered]
    registry.write_router_meta(run_dir, emb, config.default_cost_weight, predicted, 1 - val_errors[answered])
    experiment_id = mlflow.setup()
    champion = registry.champion_router(mlflow.model_name)
    champion_audc = None
    if champion is not None and set(champion.llms_) <= set(pool):
        idx = [pool.index(m) for m in champion.llms_]
        champion_audc = evaluate_router(champion, x_test, test_scores[:, idx], realised[:, idx])[0]
    tags = {
        "pool": ",".join(pool),
        "embedder_id": emb.embedder_id,
        "cluster_map_version": latest["version"],
        "audc": f"{audc:.6f}",
        "test_prompts": str(int(complete.sum())),
        # a gain over LLMs the map was trained on is not an unseen-LLM result
        "cluster_map_training_llms": ",".join(seen),
        "unseen_llms": ",".join(unseen),
        "test_costs": "per query" if not np.isnan(test_costs[complete]).all() else "mean validation cost",
        # what this version was built and scored on: validation and test ids, outcomes and costs of the pool
        "data_snapshot": fingerprint(pool, val_ids, val_errors, test_ids, test_scores, cost, realised),
    }
    version = registry.register_router(
        run_dir,
        mlflow.model_name,
        experiment_id,
        params={"cluster_map_kind": latest["kind"], "n_clusters": latest["n_clusters"], "pool_size": len(pool)},
        metrics={"audc": audc, "qnc": qnc, "zero_audc": zero_audc, "audc_gain_vs_zero": audc - zero_audc},
        tags=tags,
        figures=figures,
        input_example=["What is the derivative of x^2?"],
    )
    alias = registry.promote(mlflow.model_name, version, better=champion_audc is None or audc >= champion_audc)
    plots = {name.removesuffix(".png"): markdown_image(figure, name) for name, figure in figures.items()}
    for figure in figures.values():
        plt.close(figure)
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "alias": alias,
            "audc": audc,
            "zero_audc": zero_audc,
            "qnc": qnc,
            "champion_audc_same_test_set": champion_audc,
            "pool": pool,
            "cluster_map_training_llms": seen,
            "unseen_llms": unseen,
            "excluded_failing_checks": sorted(failing),
            "cluster_map_version": latest["version"],
            **plots,
        }
    )


def _check_one_psi(uni: UniRouter, stored: dict[str, np.ndarray]) -> None:
    """The router's Psi must be the features ``llm_error_features`` stored: grades that changed since make them
    stale, and the router waits for the features to follow rather than route on a Psi nobody can inspect."""
    stale = [m for j, m in enumerate(uni.llms_) if not np.allclose(uni.psi_[j], stored[m], atol=1e-9, equal_nan=True)]
    if stale:
        raise dg.Failure(
            f"stored features of {stale} differ from their current grades: re-materialise llm_error_features "
            "for them (automation does once their grades' checks pass), then the router"
        )
