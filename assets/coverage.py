"""Coverage drift: does the validation set still look like the champion's traffic (``traffic_coverage``), and the
stored traffic prompts added to it when it does not (``traffic_validation_prompts``, launched by the coverage
sensor)."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import dagster as dg
import duckdb
import numpy as np
import polars as pl

import warehouse as wh
from assets.decisions import GROUP, routing_decisions
from assets.metadata import markdown_image, markdown_table
from assets.profiling import GROUP as PROFILING_GROUP
from assets.resources import EmbedderResource, MlflowResource, WarehouseResource
from assets.router import router
from assets.traffic import traffic_samples
from profiling.traffic_prompts import TRAFFIC_DATASET, add_traffic_prompts, added_request_ids
from router_core import (
    CoverageReference,
    CoverageReport,
    Embedder,
    RouterInputError,
    cluster_weight_matrix,
    load_cluster_map,
    plot_coverage,
    prompt_hash,
    stratified_traffic_sample,
)
from router_core.coverage import DEFAULT_FAR_BOUND, DEFAULT_MIN_PROMPTS

#: Traffic total variation beyond which coverage drifted (keep it 2-3x the reported ``null_total_variation``).
DEFAULT_BOUND = 0.1
#: Stored traffic prompts proposed for the validation set when coverage drifted.
DEFAULT_SAMPLE_SIZE = 100


class CoverageConfig(dg.Config):
    """When coverage drifted (``bound`` on the total variation of cluster shares, ``far_bound`` on the share of
    sampled prompts farther from every cluster than 99% of validation prompts, each measure counting from
    ``min_prompts`` prompts on), how many stored traffic prompts to propose for the validation set
    (``sample_size``, stratified by cluster; ``seed`` draws another sample) and the catalog LLM that judges their
    answers (``judge``: empty proposes none). ``router_version``: the version whose traffic is measured (empty:
    the champion)."""

    bound: float = DEFAULT_BOUND
    far_bound: float = DEFAULT_FAR_BOUND
    min_prompts: int = DEFAULT_MIN_PROMPTS
    sample_size: int = DEFAULT_SAMPLE_SIZE
    seed: int = 0
    judge: str = ""
    router_version: str = ""


@dg.asset(group_name=GROUP, deps=[routing_decisions, traffic_samples, router], pool="duckdb")
def traffic_coverage(
    config: CoverageConfig, warehouse: WarehouseResource, embedder: EmbedderResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Traffic against the validation set through the router version's cluster map: each cluster's share of its
    decisions vs of the validation prompts, and the share of sampled traffic prompts (embedded with its embedder,
    cached) farther from every cluster than 99% of validation prompts. When that drifted past the bounds, a
    stratified sample of stored traffic prompts not yet added is proposed (``to_add``): the coverage sensor adds
    them to the validation set. Without sampled traffic (``traffic.sample_rate``) nothing is proposed."""
    _check(config)
    version, tags = _router_version(mlflow, config.router_version)
    model = embedder.embedder()
    if model.embedder_id != tags["embedder_id"]:
        raise dg.Failure(
            f"embedder={model.embedder_id!r}: router version {version} embeds with {tags['embedder_id']!r}; "
            "configure the embedder resource as the router's"
        )
    with warehouse.connect() as con:
        map_row = wh.cluster_map_by_version(con, tags["cluster_map_version"])
        if map_row is None:
            raise dg.Failure(f"cluster_map_version={tags['cluster_map_version']!r} (router {version}): not registered")
        try:
            _, x_val = wh.read_prompt_vectors(con, model.embedder_id, ["validation"])
        except wh.WarehouseInputError as exc:
            raise dg.Failure(f"{exc} (materialise prompt_embeddings first)") from None
        decisions = wh.read_decision_weights(con, version)
        head = {"router_version": version, "cluster_map_version": map_row["version"], "embedder_id": model.embedder_id}
        if decisions.height == 0:  # nothing to measure: no sampled prompt is embedded for it
            reason = f"no decision of router version {version} with cluster weights yet"
            return dg.MaterializeResult(metadata={**head, "drifted": False, "reason": reason, "to_add": []})
        samples = wh.read_sampled_traffic(con, version)
        x_samples = _vectors(con, model, samples["prompt"].to_list())
        added = added_request_ids(con)
    reference = CoverageReference.from_validation(load_cluster_map(map_row["path"]).transform(x_val), x_val)
    try:
        metadata = _measure(reference, decisions, samples, x_samples, added, config)
    except RouterInputError as exc:
        raise dg.Failure(str(exc)) from None
    return dg.MaterializeResult(metadata={**head, **metadata})


def _check(config: CoverageConfig) -> None:
    """Refuse a bad setting before anything is read, naming it."""
    for name, value, ok, rule in (
        ("bound", config.bound, 0 <= config.bound <= 1, "in [0, 1]"),
        ("far_bound", config.far_bound, 0 <= config.far_bound <= 1, "in [0, 1]"),
        ("min_prompts", config.min_prompts, config.min_prompts >= 1, ">= 1"),
        ("sample_size", config.sample_size, config.sample_size >= 0, ">= 0"),
    ):
        if not ok:
            raise dg.Failure(f"traffic_coverage.config.{name}={value!r}: must be {rule}")


def _measure(
    reference: CoverageReference,
    decisions: pl.DataFrame,
    samples: pl.DataFrame,
    x_samples: np.ndarray | None,
    added: list[str],
    config: CoverageConfig,
) -> dict:
    """The coverage report of ``decisions`` and sampled traffic, and its proposal when it drifted, as metadata."""
    weights = cluster_weight_matrix(decisions["cluster_weights"], reference.centres.shape[0], decisions["request_id"])
    report = reference.report(weights, x_samples)
    drifted = report.drifted(config.bound, config.far_bound, config.min_prompts)
    reason = report.reason(config.bound, config.far_bound, config.min_prompts)
    proposal = _proposal(reference, report, samples, x_samples, added, config) if drifted else None
    return _metadata(report, drifted, reason, proposal, config)


def _router_version(mlflow: MlflowResource, version: str) -> tuple[str, dict[str, str]]:
    """The router version measured (``version``, else the champion) and its registry tags."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from serving import registry

    mlflow.setup()
    if not version:
        found = registry.champion(mlflow.model_name)
        if found is None:
            raise dg.Failure(f"model {mlflow.model_name!r} has no champion yet: materialise router first")
        return str(found.version), found.tags
    try:
        return version, MlflowClient().get_model_version(mlflow.model_name, version).tags
    except MlflowException:
        raise dg.Failure(f"traffic_coverage.config.router_version={version!r}: no such version") from None


def _vectors(con: duckdb.DuckDBPyConnection, model: Embedder, texts: list[str]) -> np.ndarray | None:
    """Vectors of ``texts`` from ``model``; only texts without one in the warehouse are embedded, then stored there
    as prompt vectors are (by content hash). None for no text."""
    if not texts:
        return None
    hashes = [prompt_hash(t) for t in texts]
    stored = wh.read_embeddings(con, model.embedder_id, hashes)
    text_of = dict(zip(hashes, texts, strict=True))
    todo = sorted(set(text_of) - set(stored))
    if todo:
        new = np.asarray(model.embed([text_of[h] for h in todo]), dtype=np.float32)
        wh.upsert_embeddings(con, model.embedder_id, todo, new)
        stored.update(zip(todo, new, strict=True))
    return np.stack([stored[h] for h in hashes])


def _proposal(
    reference: CoverageReference,
    report: CoverageReport,
    samples: pl.DataFrame,
    x_samples: np.ndarray | None,
    added: list[str],
    config: CoverageConfig,
) -> pl.DataFrame | None:
    """The stratified sample of sampled traffic prompts not added yet (``request_id, cluster, far``); None when
    there are none."""
    fresh = ~samples["request_id"].is_in(added)
    if x_samples is None or not fresh.any():
        return None
    candidates = samples.filter(fresh)
    weights = cluster_weight_matrix(candidates["cluster_weights"], len(report.traffic_share), candidates["request_id"])
    distances, _ = reference.nearest(x_samples[fresh.to_numpy()])
    return stratified_traffic_sample(
        candidates["request_id"].to_list(), weights, config.sample_size, report, distances, config.seed
    )


def _metadata(
    report: CoverageReport, drifted: bool, reason: str, proposal: pl.DataFrame | None, config: CoverageConfig
) -> dict:
    """The asset page: the decision and why, the measures, the table and plot of shares, what is proposed."""
    from matplotlib import pyplot as plt

    table = report.to_frame()
    figure = plot_coverage(
        table, f"Cluster shares: total variation {report.total_variation:.3f} (bound {config.bound})"
    )
    image = markdown_image(figure, "cluster_shares")
    plt.close(figure)
    to_add = [] if proposal is None else proposal["request_id"].to_list()
    return {
        "drifted": drifted,
        "reason": dg.MetadataValue.text(reason),
        **report.summary(),
        "bound": config.bound,
        "far_bound": config.far_bound,
        "min_prompts": config.min_prompts,
        "clusters": markdown_table(table),
        "cluster_shares": image,
        "judge": config.judge,
        "to_add": dg.MetadataValue.json(to_add),
        "to_add_count": len(to_add),
        "to_add_by_cluster": markdown_table(
            proposal.group_by("cluster").agg(prompts=pl.len(), far=pl.col("far").sum()).sort("cluster")
            if proposal is not None
            else pl.DataFrame({"cluster": [], "prompts": [], "far": []})
        ),
    }


class TrafficPromptsConfig(dg.Config):
    """The sampled requests to add as validation prompts (the coverage sensor passes a report's ``to_add``), and the
    catalog LLM judging their answers."""

    request_ids: list[str] = []  # noqa: RUF012 - pydantic copies field defaults
    judge: str = ""


@dg.asset(group_name=PROFILING_GROUP, deps=[traffic_coverage], pool="duckdb")
def traffic_validation_prompts(
    config: TrafficPromptsConfig, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """Stored traffic prompts added to the validation set as new prompts of the ``traffic`` dataset (prompt id:
    ``traffic/<request id>``), graded by the judge with a reference-free rubric; a request already added is not
    added again, one past its retention is gone. The nightly profiling then asks the pool for their answers, as for
    any new validation prompt; their vectors are stored now (the router's embedder)."""
    with warehouse.connect() as con:
        if config.request_ids and config.judge not in wh.read_llms(con)["name"].to_list():
            raise dg.Failure(
                f"traffic_validation_prompts.config.judge={config.judge!r}: not an LLM of the catalog (it grades the "
                "traffic prompts' answers)"
            )
        samples = wh.read_traffic_samples(con).filter(pl.col("request_id").is_in(config.request_ids))
        stored = add_traffic_prompts(con, samples, config.judge)
        _vectors(con, embedder.embedder(), stored["text"].to_list())
        pending = wh.pending_counts(con)
        total = wh.read_prompts(con, dataset=TRAFFIC_DATASET).height
    return dg.MaterializeResult(
        metadata={
            "dataset": TRAFFIC_DATASET,
            "added": stored.height,
            "already_added": samples.height - stored.height,
            "past_retention": len(set(config.request_ids) - set(samples["request_id"])),
            "judge": config.judge,
            "traffic_prompts": total,
            "validation_prompts_pending": dict(pending.iter_rows()),
        }
    )
