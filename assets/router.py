"""The router: cluster map + Psi + costs of the pool, evaluated on test prompts, registered in MLflow."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import math
from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

import warehouse as wh
from assets import automation
from assets.metadata import fingerprint, markdown_image
from assets.resources import ArtifactsResource, EmbedderResource, MlflowResource, WarehouseResource
from assets.routing import cluster_map, llm_error_features
from router_core import RouterInputError, RouterScores, fit_pool, load_cluster_map, version_figures
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
    ]
)


class RouterConfig(dg.Config):
    """The pool (default: every active catalog LLM with features for the current map); the serving default
    ``default_cost_weight`` (unset: automatic, the cheapest point of the pool's cross-fitted validation deferral
    curve within 0.005 of its best accuracy); the champion gate's ``gate_tolerance`` (AUDC a new version may lose
    against the champion over the cost range both reach and still replace it); and the MLflow UI the asset
    links to (empty: the tracking server when MLflow talks to one, else 127.0.0.1:5000)."""

    pool: list[str] | None = None
    default_cost_weight: float | None = None
    gate_tolerance: float = gate.DEFAULT_TOLERANCE
    mlflow_ui_url: str = ""


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
    champion's, or the latest such), nothing is registered: the result says "unchanged" and names it."""
    from serving import versions

    emb = embedder.embedder()
    try:
        with warehouse.connect() as con:
            data = wh.read_router_inputs(con, emb.embedder_id, config.pool)
        for note in data.notes():
            context.log.warning(note)
        fit = fit_pool(
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
        )
    except (wh.RouterInputsError, RouterInputError) as exc:  # no map or pool, features stale against their grades
        raise dg.Failure(str(exc)) from exc
    # what this version was built and scored on: validation and test ids, outcomes and costs of the pool
    snapshot = fingerprint(
        fit.pool, data.val_ids, fit.val_errors, data.test_ids, fit.test_scores, fit.cost, fit.realised
    )
    left_out = _left_out(data.checks, data.unpriced)
    new = versions.candidate(
        fit, data.cluster_map, emb.embedder_id, snapshot, data.prompts, data.val_ids, data.cost_basis, left_out,
        version_figures(fit),
    )  # fmt: skip
    run_dir = artifacts.path("routers", context.run.run_id)
    published = versions.publish(new, mlflow.model_name, mlflow.setup(), run_dir, emb, config.gate_tolerance)
    context.log.info(f"{published.status}; champion gate: {published.verdict['gate']}")
    return dg.MaterializeResult(metadata=_metadata(new, published, left_out, mlflow.model_name, config.mlflow_ui_url))


def _metadata(
    new: "versions.Candidate", published: "versions.Published", left_out: dict[str, str], model_name: str, ui: str
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
        "llms": _pool_table(card.pool, left_out),
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
    from matplotlib import pyplot as plt

    plots = {name.removesuffix(".png"): markdown_image(figure, name) for name, figure in figures.items()}
    for figure in figures.values():
        plt.close(figure)
    return plots


def _pool_table(entries: list["PoolEntry"], left_out: dict[str, str]) -> dg.MetadataValue:
    """The pool, one row per LLM with its numbers rounded, then the LLMs left out and why."""
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
            }
        )
        for e in sorted(entries, key=lambda e: e.usd_per_query)
    ]
    blank = dict.fromkeys(c.name for c in POOL_TABLE_SCHEMA.columns)
    rows += [
        dg.TableRecord({**blank, "LLM": m, "in pool": False, "data checks": why}) for m, why in sorted(left_out.items())
    ]
    return dg.MetadataValue.table(rows, schema=POOL_TABLE_SCHEMA)


def _significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits (USD per query spans orders of magnitude)."""
    return float(f"{value:.{digits}g}")
