"""Routing assets: the cluster map (trained on training prompts and training LLMs) and each LLM's features Psi."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import hashlib
import json

import dagster as dg
import numpy as np
import polars as pl

import warehouse as wh
from assets.embeddings import prompt_embeddings
from assets.profiling import graded_responses, llm_partitions
from assets.resources import ArtifactsResource, EmbedderResource, WarehouseResource
from router_core import KMeansClusterMap, LearnedClusterMap, error_matrix, load_cluster_map, save_cluster_map
from router_core import llm_error_features as compute_psi

GROUP = "routing"


class ClusterMapConfig(dg.Config):
    """Which map to train, and on which LLMs' answers to the training prompts."""

    kind: str = "learned"  # "learned" (the paper's soft map) or "kmeans"
    n_clusters: int = 16
    seed: int = 0
    training_llms: list[str] | None = None  # default: every LLM graded on training prompts


def _data_version(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dg.asset(group_name=GROUP, deps=[prompt_embeddings, graded_responses], pool="duckdb")
def cluster_map(
    config: ClusterMapConfig, warehouse: WarehouseResource, embedder: EmbedderResource, artifacts: ArtifactsResource
) -> dg.MaterializeResult:
    """The cluster map Phi; its version is a hash of its parameters and training data, so a rerun on the same
    data is a no-op and a new LLM in the pool never retrains it."""
    embedder_id = embedder.embedder().embedder_id
    with warehouse.connect() as con:
        ids, x = wh.read_prompt_vectors(con, embedder_id, ["train"])
        outcomes = wh.read_outcomes(con, config.training_llms, ["train"])
        llms = config.training_llms or sorted(outcomes["model"].unique())
        errors = error_matrix(outcomes, ids, llms)
        version = _data_version(config.kind, config.n_clusters, config.seed, embedder_id, llms, ids, errors.tobytes())
        maps = {"learned": LearnedClusterMap, "kmeans": KMeansClusterMap}
        if config.kind not in maps:
            raise ValueError(f"kind={config.kind!r}: expected one of {sorted(maps)}")
        cmap = maps[config.kind](config.n_clusters, seed=config.seed).fit(x, errors)
        path = save_cluster_map(cmap, artifacts.path("cluster_maps", version))
        row = {
            "version": version,
            "kind": config.kind,
            "n_clusters": config.n_clusters,
            "embedder_id": embedder_id,
            "training_llms": [llms],
            "n_train_prompts": len(ids),
            "path": str(path),
        }
        wh.register_cluster_map(con, pl.DataFrame(row))
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "kind": config.kind,
            "n_clusters": config.n_clusters,
            "training_llms": llms,
            "train_prompts": len(ids),
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset(group_name=GROUP, partitions_def=llm_partitions, deps=[graded_responses, cluster_map], pool="duckdb")
def llm_error_features(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """One LLM's Psi: its validation error per cluster of the current cluster map."""
    model = context.partition_key
    with warehouse.connect() as con:
        latest = wh.latest_cluster_map(con)
        if latest is None:
            raise dg.Failure("no cluster map yet: materialise cluster_map first")
        ids, x = wh.read_prompt_vectors(con, embedder.embedder().embedder_id, ["validation"])
        errors = error_matrix(wh.read_outcomes(con, [model], ["validation"]), ids, [model])
        psi = compute_psi(load_cluster_map(latest["path"]).transform(x), errors, llms=[model])[0]
        observed = ~np.isnan(errors[:, 0])
        wh.upsert_llm_features(
            con,
            pl.DataFrame(
                {
                    "model": model,
                    "cluster_map_version": latest["version"],
                    "psi": [psi.tolist()],
                    "overall_error": float(errors[observed, 0].mean()),
                    "n_validation": int(observed.sum()),
                }
            ),
        )
    return dg.MaterializeResult(
        metadata={
            "cluster_map_version": latest["version"],
            "validation_prompts": int(observed.sum()),
            "overall_error": float(errors[observed, 0].mean()),
            "psi": [round(v, 4) for v in psi.tolist()],
        }
    )
