"""The router: cluster map + Psi + costs of the pool, evaluated on test prompts, registered in MLflow."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dagster as dg
import polars as pl

import warehouse as wh
from assets import automation
from assets.metadata import fingerprint, markdown_image
from assets.resources import ArtifactsResource, EmbedderResource, MlflowResource, WarehouseResource
from assets.routing import cluster_map, llm_error_features
from router_core import (
    Embedder,
    PoolFit,
    RouterInputError,
    RouterScores,
    TrafficErrorStats,
    fit_pool,
    load_cluster_map,
    selective_traffic,
    version_figures,
)
from serving import gate

if TYPE_CHECKING:  # mlflow and matplotlib load in the run that registers a router, not in every Dagster run
    from serving import versions
    from serving.model_card import PoolEntry

GROUP = "routing"

POOL_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("LLM", "string"),
        dg.TableColumn("in pool", "bool", description="false: left out (see data checks)"),
        dg.TableColumn("USD per 1k queries", "float", description="mean cost of its validation answers, x 1,000"),
        dg.TableColumn("validation accuracy", "float", description="share of answered validation prompts right"),
        dg.TableColumn("validation coverage (%)", "float", description="validation prompts it answered"),
        dg.TableColumn("test accuracy", "float", description="answering every test prompt alone"),
        dg.TableColumn("test prompts routed (%)", "float", description="at the default cost weight"),
        dg.TableColumn("data checks", "string", description="left out: the failing check and its message"),
        dg.TableColumn("profile", "string", description="validation prompts answered of those expected"),
        dg.TableColumn("onboarding USD", "float", description="what its stored answers (every split) cost"),
    ]
)


class RouterConfig(dg.Config):
    """The pool (default: every active catalog LLM with features for the current map); the serving default
    ``default_cost_weight`` (unset: automatic, the cheapest point of the pool's cross-fitted validation deferral
    curve within 0.005 of its best accuracy); the champion gate's ``gate_tolerance`` (AUDC a new version may lose
    against the champion over the cost range both reach and still replace it); and the MLflow UI the asset
    links to (empty: the tracking server when MLflow talks to one, else 127.0.0.1:5000).

    ``traffic_features`` (off by default): also build a version whose Psi blends validation errors with observed
    traffic outcomes (those of requests routed with the same cluster map and embedder), tagged ``features:
    validation+traffic``; ``traffic_heldout_fraction`` of the outcomes (by request id) are never used for features
    but by its gate, which promotes it only when neither the test prompts nor the held-out outcomes (mean Brier
    loss, within ``traffic_gate_tolerance``) say it is worse than the champion; ``traffic_weight``: how many
    validation prompts one traffic outcome is worth (lower it for a noisy judge); ``traffic_blend``: ``selective``
    blends only the cells where traffic shows a change or a re-check confirmed one (``drift_rechecks``; their
    outcomes from before the change left out), so an unchanged pool keeps its validation Psi; ``all`` every cell."""

    pool: list[str] | None = None
    default_cost_weight: float | None = None
    gate_tolerance: float = gate.DEFAULT_TOLERANCE
    mlflow_ui_url: str = ""
    traffic_features: bool = False
    traffic_heldout_fraction: float = 0.2
    traffic_weight: float = 1.0
    traffic_gate_tolerance: float = gate.DEFAULT_TRAFFIC_TOLERANCE
    traffic_blend: Literal["selective", "all"] = "selective"


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
    """A new registered router version; alias ``champion`` moves only if the gate (:mod:`serving.gate`) finds it
    not worse than the champion on the same test prompts over the cost range both reach (else ``challenger``).
    When pool, data snapshot, cluster map, embedder and default cost weight equal a registered version's (the
    champion's, or the latest such), nothing is registered: the result says "unchanged" and names it. With
    ``traffic_features`` a second version learns from traffic too (:class:`RouterConfig`; ``traffic_*`` keys)."""
    from serving import versions

    emb = embedder.embedder()
    try:
        with warehouse.connect() as con:
            data = wh.read_router_inputs(con, emb.embedder_id, config.pool)
            outcomes = wh.read_traffic_outcomes(con) if config.traffic_features else None
            changes = wh.read_rechecks(con).filter(pl.col("changed")) if config.traffic_features else None
        for note in data.notes():
            context.log.warning(note)
        fit = _fit(data, config)
        learn = (outcomes, changes, data, fit, emb.embedder_id, config, mlflow)
        traffic = None if outcomes is None else _learn_from_traffic(*learn)
    except (wh.RouterInputsError, RouterInputError) as exc:  # no map or pool, features stale against their grades
        raise dg.Failure(str(exc)) from exc
    left_out = _left_out(data.checks, data.unpriced)
    new = _candidate(fit, data, emb.embedder_id, left_out)
    run_dir = artifacts.path("routers", context.run.run_id)
    published = versions.publish(new, mlflow.model_name, mlflow.setup(), run_dir, emb, config.gate_tolerance)
    context.log.info(f"{published.status}; champion gate: {published.verdict['gate']}")
    metadata = _metadata(new, published, left_out, data.profiles, mlflow.model_name, config.mlflow_ui_url)
    if traffic is not None:
        metadata |= _traffic_version(context, *traffic, data, left_out, emb, run_dir / "traffic", mlflow, config)
    return dg.MaterializeResult(metadata=metadata)


def _fit(data: wh.RouterInputs, config: RouterConfig, traffic: TrafficErrorStats | None = None) -> PoolFit:
    """The pool fitted on ``data`` (Psi blended with ``traffic`` when given) and scored on its test prompts."""
    return fit_pool(
        load_cluster_map(data.cluster_map["path"]),
        data.pool,
        data.costs,
        data.val_ids,
        data.x_val,
        data.val_outcomes,
        data.test_ids,
        data.x_test,
        data.test_outcomes,
        data.test_query_costs,
        config.default_cost_weight,
        data.stored_psi,
        traffic,
        # a partial profile's features come from PartialProfileEstimator, which may learn from the other LLMs too
        estimated=list(data.partial_profiles()),
    )


def _candidate(fit: PoolFit, data: wh.RouterInputs, embedder_id: str, left_out: dict[str, str]) -> "versions.Candidate":
    """The version ``fit`` would be, with what it was built and scored on (validation and test ids, outcomes and
    costs of the pool) as its data snapshot."""
    from serving import versions

    estimated = fit.router.features_  # partial profiles' Psi: served, and not a function of the data above alone
    snapshot = fingerprint(
        fit.pool, data.val_ids, fit.val_errors, data.test_ids, fit.test_scores, fit.cost, fit.realised,
        *([estimated] if estimated else []),
    )  # fmt: skip
    new = versions.candidate(
        fit, data.cluster_map, embedder_id, snapshot, data.prompts, data.val_ids, data.cost_basis, left_out,
        version_figures(fit),
    )  # fmt: skip
    return versions.with_profiles(new, data.partial_profiles())


def _learn_from_traffic(
    outcomes: pl.DataFrame,
    changes: pl.DataFrame,
    data: wh.RouterInputs,
    fit: PoolFit,
    embedder_id: str,
    config: RouterConfig,
    mlflow: MlflowResource,
) -> tuple["versions.TrafficFeatures", PoolFit | None]:
    """The traffic outcomes of ``fit``'s pool, cluster map and embedder (:func:`serving.versions.traffic_features`;
    ``changes``: confirmed re-checks) and the pool fitted with Psi blended with them (None: no such outcome to learn
    from), only where a change is established when ``traffic_blend`` is ``selective``."""
    from serving import versions

    mlflow.setup()  # the registry says which versions decided with this cluster map
    features = versions.traffic_features(
        outcomes, mlflow.model_name, data.cluster_map, embedder_id, fit.pool, config.traffic_heldout_fraction,
        config.traffic_weight, changes,
    )  # fmt: skip
    if config.traffic_blend == "selective":
        kept = selective_traffic(fit.router, features.stats, features.confirmed)
        features = replace(features, stats=kept, blend="selective")
    return features, _fit(data, config, features.stats) if features.used else None


def _traffic_version(
    context: dg.AssetExecutionContext,
    traffic: "versions.TrafficFeatures",
    fit: PoolFit | None,
    data: wh.RouterInputs,
    left_out: dict[str, str],
    embedder: Embedder,
    run_dir: Path,
    mlflow: MlflowResource,
    config: RouterConfig,
) -> dict:
    """Publish the version that learned from ``traffic`` (``fit``; None: no outcomes to learn from) after its
    gate; its part of the asset page, under ``traffic_*`` keys."""
    from serving import registry, versions

    counts = {
        "traffic_outcomes_used": traffic.used,
        "traffic_outcomes_heldout": traffic.heldout.height,
        "traffic_outcomes_other_map": traffic.other_map,
    }
    if fit is None:
        status = "not built: no traffic outcomes of the pool decided with this cluster map and embedder"
        context.log.info(f"traffic features: {status}")
        return {"traffic_status": status, **counts}
    new = versions.with_traffic(_candidate(fit, data, embedder.embedder_id, left_out), traffic)
    name = mlflow.model_name
    published = versions.publish(
        new, name, mlflow.setup(), run_dir, embedder, config.gate_tolerance, config.traffic_gate_tolerance
    )
    _close(new.figures)
    context.log.info(f"traffic features: {published.status}; champion gate: {published.verdict['gate']}")
    url = registry.version_url(name, published.version, registry.ui_url(config.mlflow_ui_url))
    return {
        "traffic_status": published.status,
        "traffic_version": published.version,
        "traffic_alias": published.alias,
        "traffic_mlflow_version": dg.MetadataValue.url(url),
        **counts,
        **{f"traffic_{k}": v for k, v in published.verdict.items()},
    }


def _metadata(
    new: "versions.Candidate",
    published: "versions.Published",
    left_out: dict[str, str],
    profiles: pl.DataFrame | None,
    model_name: str,
    ui: str,
) -> dict:
    """The asset page: what was published, the pool table, headline numbers, the gate, what it was built from
    and the figures (then closed)."""
    from serving import registry

    fit, card, latest = new.fit, published.card, new.cluster_map
    return {
        "status": published.status,
        "version": published.version,
        "alias": published.alias,
        "mlflow_version": dg.MetadataValue.url(
            registry.version_url(model_name, published.version, registry.ui_url(ui))
        ),
        "pool": dg.MetadataValue.text(", ".join(fit.pool)),
        "pool_size": len(fit.pool),
        "llms": _pool_table(card.pool, left_out, profiles),
        "profile": new.tags.get("profile", "full"),
        **_headline(fit.scores, fit.pool),
        "default_cost_weight": _weight(fit.point.cost_weight),
        "default_rule": card.default_operating_point,
        **published.verdict,
        "test_prompts": len(fit.test_ids),
        "cluster_map": f"{latest['kind']}, K={latest['n_clusters']}, version {latest['version']}",
        "cluster_map_version": latest["version"],
        "embedder_id": card.embedder_id,
        "dataset": card.dataset,
        "map_trained_on": ", ".join(m for m in fit.pool if m not in card.unseen_llms) or "none",
        "unseen_llms": ", ".join(card.unseen_llms) or "none",
        "left_out": dg.MetadataValue.text("; ".join(f"{m}: {why}" for m, why in sorted(left_out.items())) or "none"),
        **_plots(new.figures),
    }


def _headline(s: RouterScores, pool: list[str]) -> dict:
    """The asset's headline numbers, rounded, their units in short names (the UI draws a long key over its
    value): ``default_*`` are the test prompts routed at the default cost weight."""
    return {
        "audc": round(s.audc, 4),
        "zero_audc": round(s.zero_audc, 4),
        "audc_gain_vs_zero": round(s.audc - s.zero_audc, 4),
        "qnc_of_best_cost": round(s.qnc, 3) if math.isfinite(s.qnc) else f"never: {s.no_qnc(pool)}",
        "default_test_accuracy": round(s.accuracy_at_default, 4),
        "default_test_usd_per_1k": _significant(1000 * s.cost_at_default),
    }


def _weight(value: float) -> float | str:
    """A cost weight for the metadata (``inf``, all to the cheapest LLM, as text)."""
    return value if math.isfinite(value) else "inf"


def _left_out(checks: pl.DataFrame, unpriced: list[str]) -> dict[str, str]:
    """Each LLM left out of the pool and why: its failing checks with their messages, or no cost."""
    reasons: dict[str, list[str]] = {}
    for model, check, message in checks.iter_rows():
        reasons.setdefault(model, []).append(f"{check} failed" + (f": {message}" if message else ""))
    return {m: "; ".join(why) for m, why in reasons.items()} | {
        m: "checks passed, but no cost on validation (prices or per-query USD)" for m in unpriced
    }


def _plots(figures: dict) -> dict[str, dg.MetadataValue]:
    """The figures as Markdown images (then closed)."""
    plots = {name.removesuffix(".png"): markdown_image(figure, name) for name, figure in figures.items()}
    _close(figures)
    return plots


def _close(figures: dict) -> None:
    """Close ``figures`` (matplotlib keeps every open figure)."""
    from matplotlib import pyplot as plt

    for figure in figures.values():
        plt.close(figure)


def _pool_table(
    entries: list["PoolEntry"], left_out: dict[str, str], profiles: pl.DataFrame | None = None
) -> dg.MetadataValue:
    """The pool, one row per LLM with its numbers rounded, then the LLMs left out and why; each with its profile's
    completeness and onboarding cost."""
    rows_of = {} if profiles is None else {r["model"]: r for r in profiles.iter_rows(named=True)}

    def profile(llm: str) -> dict:
        row = rows_of.get(llm)
        if row is None:
            return {"profile": None, "onboarding USD": None}
        done = f"{row['answered']} of {row['total']}" + (" (partial)" if row["partial"] else "")
        return {"profile": done, "onboarding USD": _significant(row["onboarding_usd"])}

    rows = [
        dg.TableRecord(
            {
                "LLM": e.llm,
                "in pool": True,
                "USD per 1k queries": _significant(1000 * e.usd_per_query),
                "validation accuracy": round(e.validation_accuracy, 3),
                "validation coverage (%)": round(100 * e.validation_coverage, 1),
                "test accuracy": round(e.test_accuracy, 3),
                "test prompts routed (%)": round(100 * e.test_share_routed, 1),
                "data checks": "passed",
                **profile(e.llm),
            }
        )
        for e in sorted(entries, key=lambda e: e.usd_per_query)
    ]
    blank = dict.fromkeys(c.name for c in POOL_TABLE_SCHEMA.columns)
    rows += [
        dg.TableRecord({**blank, "LLM": m, "in pool": False, "data checks": why, **profile(m)})
        for m, why in sorted(left_out.items())
    ]
    return dg.MetadataValue.table(rows, schema=POOL_TABLE_SCHEMA)


def _significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits (USD per query spans orders of magnitude)."""
    return float(f"{value:.{digits}g}")
