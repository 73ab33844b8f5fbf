"""Routing assets: the cluster map (trained on training prompts and training LLMs) and each LLM's features Psi."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

import warehouse as wh
from assets import automation
from assets.embeddings import prompt_embeddings
from assets.metadata import fingerprint, markdown_table
from assets.profiling import graded_responses, llm_check_spec, llm_partitions
from assets.resources import ArtifactsResource, EmbedderResource, WarehouseResource
from profiling.onboarding import known_validation_errors
from router_core import (
    DEFAULT_PROMPTS_PER_CLUSTER,
    KMeansClusterMap,
    LearnedClusterMap,
    RouterInputError,
    clusters_for,
    error_matrix,
    load_cluster_map,
    psi_drift,
    save_cluster_map,
)
from router_core import llm_error_features as compute_psi
from router_core.onboarding import PartialProfileEstimator

GROUP = "routing"


class ClusterMapConfig(dg.Config):
    """Which map to train, and on which LLMs' answers to the training prompts."""

    kind: str = "learned"  # "learned" (the paper's soft map) or "kmeans"
    n_clusters: int = 16  # at most: lowered to fit a small prompt set (prompts_per_cluster)
    prompts_per_cluster: int = DEFAULT_PROMPTS_PER_CLUSTER  # training prompts a cluster holds on average, at least
    seed: int = 0
    training_llms: list[str] | None = None  # default: every LLM graded on training prompts


@dg.asset(
    group_name=GROUP,
    # The map learns from the training LLMs' grades, but by design never follows grades (a new LLM must not move
    # it; the weekly schedule refits it, skipping when its training data is unchanged, and its version hashes that
    # data): the edge is drawn but maps to no partition, so new grades neither trigger it nor leave it "Unsynced".
    deps=[
        prompt_embeddings,
        dg.AssetDep(graded_responses, partition_mapping=dg.SpecificPartitionsPartitionMapping([])),
    ],
    pool="duckdb",
    output_required=False,
    automation_condition=automation.CLUSTER_MAP,
)
def cluster_map(
    context: dg.AssetExecutionContext,
    config: ClusterMapConfig,
    warehouse: WarehouseResource,
    embedder: EmbedderResource,
    artifacts: ArtifactsResource,
):
    """The cluster map Phi; its version is a hash of its parameters and training data. When that is the
    current map's version nothing is refitted or materialised, so a new LLM in the pool never moves it."""
    maps = {"learned": LearnedClusterMap, "kmeans": KMeansClusterMap}
    if config.kind not in maps:
        raise dg.Failure(f"cluster_map.kind={config.kind!r}: expected one of {sorted(maps)}")
    embedder_id = embedder.embedder().embedder_id
    with warehouse.connect() as con:
        ids, x = wh.read_prompt_vectors(con, embedder_id, ["train"])
        failing = set(wh.failing_llms(con))
        outcomes = wh.read_outcomes(con, config.training_llms, ["train"])
        llms = config.training_llms or sorted(set(outcomes["model"]) - failing)  # default: sorted, one version
        if not llms or not ids:
            context.log.info("no training prompts answered by a training LLM yet: nothing to fit")
            return
        errors = error_matrix(outcomes, ids, llms)
        k = _fitted_clusters(context, config, len(ids))
        version = fingerprint(config.kind, k, config.seed, embedder_id, llms, ids, errors.tobytes())
        latest = wh.latest_cluster_map(con)
        current = latest is not None and latest["version"] == version and Path(latest["path"]).exists()
        if current and _materialized_version(context) == version:
            context.log.info(f"training data and parameters unchanged: cluster map {version} stays current")
            return
        if current:  # fitted before this Dagster instance knew of it (e.g. a new DAGSTER_HOME): record it
            context.log.info(f"cluster map {version} is already current in the warehouse: recorded, not refitted")
        else:
            cmap = maps[config.kind](k, seed=config.seed).fit(x, errors)
            path = save_cluster_map(cmap, artifacts.path("cluster_maps", version))
            row = {
                "version": version,
                "kind": config.kind,
                "n_clusters": k,
                "embedder_id": embedder_id,
                "training_llms": [llms],
                "n_train_prompts": len(ids),
                "path": str(path),
            }
            wh.register_cluster_map(con, pl.DataFrame(row))
    yield dg.MaterializeResult(
        metadata={
            "version": version,
            "kind": config.kind,
            "n_clusters": k,
            "n_clusters_asked": config.n_clusters,
            "training_llms": llms,
            "train_prompts": len(ids),
        },
        data_version=dg.DataVersion(version),
    )


def _fitted_clusters(context: dg.AssetExecutionContext, config: ClusterMapConfig, n_prompts: int) -> int:
    """The K to fit: ``config.n_clusters``, lowered (and said so) when the training prompts are too few for it."""
    try:
        k = clusters_for(n_prompts, config.n_clusters, config.prompts_per_cluster)
    except RouterInputError as exc:
        raise dg.Failure(f"cluster_map.{exc}") from exc
    if k < config.n_clusters:
        context.log.warning(
            f"{n_prompts} training prompts: K={k} clusters, not the {config.n_clusters} asked "
            f"(at least {config.prompts_per_cluster} prompts a cluster on average; cluster_map.prompts_per_cluster)"
        )
    return k


def _materialized_version(context: dg.AssetExecutionContext) -> str | None:
    """The cluster-map version of this asset's latest materialisation in this Dagster instance."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    version = event.asset_materialization.metadata.get("version") if event else None
    return version.value if version is not None else None


DRIFT_CHECK = "check_llm_error_features_drift"

DRIFT_SPEC = llm_check_spec(
    DRIFT_CHECK,
    "llm_error_features",
    "After a re-profiling: clusters whose error moved beyond 3 standard errors of sampling noise "
    "since the previous profile. Warns.",
)


@dg.asset(
    group_name=GROUP,
    partitions_def=llm_partitions,
    deps=[graded_responses, cluster_map],
    pool="duckdb",
    automation_condition=automation.FEATURES,
    check_specs=[DRIFT_SPEC],
)
def llm_error_features(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """One LLM's Psi: its validation error per cluster of the current cluster map; a partial profile's (a new LLM
    asked part of the validation prompts: ``llm_responses.config.onboarding``) from
    :class:`router_core.onboarding.PartialProfileEstimator`, which also learns from the fully profiled LLMs. After
    a re-profiling (same name, new answers) its check compares Psi with the previous profile's, through the same
    map."""
    model = context.partition_key
    with warehouse.connect() as con:
        latest = wh.latest_cluster_map(con)
        if latest is None:
            raise dg.Failure("no cluster map yet: materialise cluster_map first")
        if model in wh.failing_llms(con):
            raise dg.Failure(f"llm={model!r}: its data checks fail, so it gets no features (see llm_checks)")
        ids, x = wh.read_prompt_vectors(con, embedder.embedder().embedder_id, ["validation"])
        errors = error_matrix(wh.read_outcomes(con, [model], ["validation"]), ids, [model])[:, 0]
        previous = wh.read_archived_outcomes(con, model, ["validation"])
        weights = load_cluster_map(latest["path"]).transform(x)
        profile = wh.read_profiles(con, [model]).row(0, named=True)
        if profile["partial"]:  # learned from the fully profiled LLMs too
            known = known_validation_errors(con, ids, latest["version"], model)
            psi = PartialProfileEstimator().fit(weights, known).estimate(errors, complete=[False]).psi[0]
        else:
            psi = compute_psi(weights, errors, llms=[model])[0]
        observed = ~np.isnan(errors)
        wh.upsert_llm_features(
            con,
            pl.DataFrame(
                {
                    "model": model,
                    "cluster_map_version": latest["version"],
                    "psi": [psi.tolist()],
                    "overall_error": float(errors[observed].mean()),
                    "n_validation": int(observed.sum()),
                }
            ),
        )
    drift = _drift_check(context, model, weights, errors, previous, ids)
    return dg.MaterializeResult(
        metadata={
            "cluster_map_version": latest["version"],
            "validation_prompts": int(observed.sum()),
            "overall_error": float(errors[observed].mean()),
            "psi": [round(v, 4) for v in psi.tolist()],
            "profile": f"{'partial' if profile['partial'] else 'full'} ({profile['answered']} of {profile['total']})",
        },
        check_results=[drift],
    )


def _drift_check(
    context: dg.AssetExecutionContext,
    model: str,
    weights: np.ndarray,
    errors: np.ndarray,
    previous: pl.DataFrame,
    ids: list[str],
) -> dg.AssetCheckResult:
    """Warn, naming the LLM and the clusters, when Psi moved beyond sampling noise since the previous profile."""
    if previous.height == 0:
        return dg.AssetCheckResult(
            check_name=DRIFT_CHECK,
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{model}: no earlier profile to compare with",
            metadata={"llm": model, "previous_profile": "none"},
        )
    errors_before = error_matrix(previous.drop("archived_at"), ids, [model])[:, 0]
    drift = psi_drift(weights, errors_before, errors)
    moved = drift.filter("moved")["cluster"].to_list()
    changes = [
        f"cluster {row['cluster']} error {row['psi_before']:.0%} -> {row['psi_after']:.0%}"
        for row in drift.filter("moved").iter_rows(named=True)
    ]
    summary = (
        f"error moved beyond 3 standard errors of sampling noise since the previous profile: {'; '.join(changes)}"
        if moved
        else "error within 3 standard errors of sampling noise of the previous profile on every cluster"
    )
    if moved:
        context.log.warning(f"{model}: {summary}")
    return dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=not moved,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{model}: {summary}",
        metadata={
            "llm": model,
            "summary": summary,
            "moved_clusters": moved,
            "previous_profile_archived_at": str(previous["archived_at"].max()),
            "max_abs_z": float(drift["z"].abs().max()),
            "clusters": markdown_table(drift),
        },
    )
