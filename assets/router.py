"""The router: cluster map + Psi + costs of the pool, evaluated on test prompts, registered in MLflow."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import dagster as dg
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
    choose,
    error_matrix,
    evaluate_router,
    load_cluster_map,
    operating_point,
    out_of_fold_errors,
    plot_deferral_curves,
    plot_psi_heatmap,
    save_router,
    single_llm_points,
    value_matrix,
)
from serving import gate

if TYPE_CHECKING:  # mlflow and matplotlib load in the run that registers a router, not in every Dagster run
    from serving import registry

GROUP = "routing"
#: Tags that say what a version is: equal to a registered version's, a new version would be that one again.
IDENTITY_TAGS = ("pool", "data_snapshot", "cluster_map_version", "embedder_id", "default_cost_weight")
#: Metrics with no value when no budget reaches the best LLM's accuracy (logged as absent, with the reason).
QNC_METRICS = ("test_qnc_fraction_of_best_cost", "test_zero_router_qnc_fraction_of_best_cost")

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
    from serving import registry

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
        checks = wh.read_failing_checks(con)
        failing = set(checks["model"])
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
        prompts = wh.read_prompts(con, splits=["validation", "test"]).select("prompt_id", "dataset", "split")
        cost_basis = {m: b or "" for m, b in wh.read_cost_basis(con, pool).iter_rows()}  # the card says which
    complete = ~np.isnan(test_scores).any(axis=1)
    if not complete.any():
        raise dg.Failure(f"no test prompt answered by the whole pool {pool}: profile the pool on the test split")
    x_test, test_scores, scored_ids = x_test[complete], test_scores[complete], np.asarray(test_ids)[complete]
    cost = np.array([costs[m] for m in pool])
    # each test answer's own cost where the data has it, else the LLM's mean validation cost
    realised = np.where(np.isnan(test_costs[complete]), cost, test_costs[complete])
    uni = UniRouter(load_cluster_map(latest["path"])).fit_arrays(x_val, val_errors, pool, cost, val_ids)
    _check_one_psi(uni, stored_psi)
    zero = ZeroRouter().fit_arrays(x_val, val_errors, pool, cost, val_ids)
    # the default operating point and budgets resolve on the pool's validation curve, cross-fitted so that it
    # describes prompts the router has not seen
    answered = ~np.isnan(val_errors).any(axis=1)
    predicted, val_scores = out_of_fold_errors(uni, x_val, val_errors)[answered], 1 - val_errors[answered]
    point = operating_point(predicted, uni.costs_, val_scores, config.default_cost_weight)
    scores = _score(uni, zero, x_test, test_scores, realised, point.cost_weight)
    left_out = _left_out(checks, unpriced)
    seen = [m for m in pool if m in set(latest["training_llms"])]
    tags = {
        "pool": ",".join(pool),
        "embedder_id": emb.embedder_id,
        "cluster_map_version": latest["version"],
        "default_cost_weight": repr(point.cost_weight),
        "default_operating_point": registry.describe_operating_point(point),
        "audc": f"{scores.audc:.6f}",
        "test_prompts": str(len(scored_ids)),
        # a gain over LLMs the map was trained on is not an unseen-LLM result
        "cluster_map_training_llms": ",".join(seen),
        "unseen_llms": ",".join(m for m in pool if m not in seen),
        "test_costs": "per query" if not np.isnan(test_costs[complete]).all() else "mean validation cost",
        # what this version was built and scored on: validation and test ids, outcomes and costs of the pool
        "data_snapshot": fingerprint(pool, val_ids, val_errors, test_ids, test_scores, cost, realised),
    }
    card = registry.ModelCard(
        pool=_pool_entries(pool, cost, val_errors, scores, cost_basis),
        test_prompts=len(scored_ids),
        audc=scores.audc,
        zero_audc=scores.zero_audc,
        qnc=scores.qnc,
        zero_qnc=scores.zero_qnc,
        best_llm=pool[scores.best],
        cluster_map_kind=latest["kind"],
        n_clusters=int(latest["n_clusters"]),
        cluster_map_version=latest["version"],
        embedder_id=emb.embedder_id,
        dataset=_datasets(prompts, val_ids, scored_ids),
        default_cost_weight=point.cost_weight,
        data_snapshot=tags["data_snapshot"],
        unseen_llms=[m for m in pool if m not in seen],
        test_costs=tags["test_costs"],
        default_operating_point=tags["default_operating_point"],
        left_out=left_out,
    )
    figures = _figures(scores, uni, pool, len(scored_ids))
    experiment_id = mlflow.setup()
    same = registry.identical_version(mlflow.model_name, tags, IDENTITY_TAGS)
    if same is not None:
        version, alias = str(same.version), ",".join(sorted(same.aliases)) or "no alias"
        status = (
            "unchanged: pool, data snapshot, cluster map, embedder and default cost weight equal "
            f"v{version}'s ({alias}); no new version"
        )
        verdict = {"gate": f"not run: {status}"}
        context.log.info(status)
    else:
        decision = gate.judge(
            scores.curve,
            scores.cost_range,
            registry.champion_router(mlflow.model_name),
            registry.champion_version(mlflow.model_name),
            pool,
            x_test,
            test_scores,
            realised,
            config.gate_tolerance,
        )
        context.log.info(f"champion gate: {decision.reason}")
        run_dir = artifacts.path("routers", context.run.run_id)
        save_router(uni, run_dir)
        registry.write_router_meta(run_dir, emb, point.cost_weight, predicted, val_scores, point)
        card = replace(card, gate=decision.reason)
        version = registry.register_router(
            run_dir,
            mlflow.model_name,
            experiment_id,
            params={
                "cluster_map_kind": latest["kind"],
                "n_clusters": latest["n_clusters"],
                "pool_size": len(pool),
                "default_cost_weight": point.cost_weight,
                "gate_tolerance": config.gate_tolerance,
                "test_prompts": len(scored_ids),
            },
            metrics=_metrics(scores, cost),
            tags={**tags, "gate": decision.reason},
            figures=figures,
            input_example=["What is the derivative of x^2?"],
            run_name=registry.run_name(latest["version"], len(pool)),
            card=card,
            absent_reasons={k: _no_qnc(pool, scores) for k in QNC_METRICS},
            json_artifacts={"pool.json": [vars(entry) for entry in card.pool]},
        )
        alias = registry.promote(mlflow.model_name, version, better=decision.promote)
        status = f"registered v{version} ({alias})"
        verdict = {"gate": decision.reason, **decision.numbers()}
    return dg.MaterializeResult(
        metadata={
            "status": status,
            "version": version,
            "alias": alias,
            "mlflow_version": dg.MetadataValue.url(
                registry.version_url(mlflow.model_name, version, registry.ui_url(config.mlflow_ui_url))
            ),
            "pool": dg.MetadataValue.text(", ".join(pool)),
            "pool_size": len(pool),
            "llms": _pool_table(card.pool, left_out),
            **_headline(scores, pool),
            "default_cost_weight": _weight(point.cost_weight),
            "default_rule": tags["default_operating_point"],
            **verdict,
            "test_prompts": len(scored_ids),
            "cluster_map": f"{latest['kind']}, K={latest['n_clusters']}, version {latest['version']}",
            "cluster_map_version": latest["version"],
            "embedder_id": emb.embedder_id,
            "dataset": card.dataset,
            "map_trained_on": ", ".join(seen) or "none",
            "unseen_llms": ", ".join(card.unseen_llms) or "none",
            "left_out": dg.MetadataValue.text(
                "; ".join(f"{m}: {why}" for m, why in sorted(left_out.items())) or "none"
            ),
            **_plots(figures),
        }
    )


@dataclass(frozen=True)
class _Scores:
    """UniRoute and ZeroRouter on the test prompts; each LLM alone (``llm_cost``, ``llm_acc``); which LLM
    UniRoute picks per prompt at the default cost weight (``chosen``) and that operating point's mean accuracy
    and cost."""

    audc: float
    qnc: float
    curve: pl.DataFrame
    zero_audc: float
    zero_qnc: float
    zero_curve: pl.DataFrame
    llm_cost: np.ndarray
    llm_acc: np.ndarray
    chosen: np.ndarray
    accuracy_at_default: float
    cost_at_default: float

    @property
    def best(self) -> int:
        """The most accurate LLM's index: QNC's reference."""
        return int(self.llm_acc.argmax())

    @property
    def cost_range(self) -> tuple[float, float]:
        """[cheapest, priciest] LLM of the pool on the test prompts: the range AUDC is measured over."""
        return float(self.llm_cost.min()), float(self.llm_cost.max())


def _score(uni, zero, x_test, test_scores, realised, default_cost_weight: float) -> _Scores:
    audc, qnc, curve = evaluate_router(uni, x_test, test_scores, realised)
    zero_audc, zero_qnc, zero_curve = evaluate_router(zero, x_test, test_scores, realised)
    llm_cost, llm_acc = single_llm_points(test_scores, uni.costs_, realised)
    chosen = choose(uni.predict_error(x_test), uni.costs_, default_cost_weight)
    rows = np.arange(len(chosen))
    return _Scores(
        audc=audc,
        qnc=qnc,
        curve=curve,
        zero_audc=zero_audc,
        zero_qnc=zero_qnc,
        zero_curve=zero_curve,
        llm_cost=llm_cost,
        llm_acc=llm_acc,
        chosen=chosen,
        accuracy_at_default=float(test_scores[rows, chosen].mean()),
        cost_at_default=float(realised[rows, chosen].mean()),
    )


def _pool_entries(
    pool: list[str], cost: np.ndarray, val_errors: np.ndarray, s: _Scores, cost_basis: dict[str, str]
) -> list["registry.PoolEntry"]:
    from serving import registry

    return [
        registry.PoolEntry(
            llm=m,
            usd_per_query=float(cost[j]),
            validation_accuracy=float(1 - np.nanmean(val_errors[:, j])),
            validation_coverage=float(1 - np.isnan(val_errors[:, j]).mean()),
            test_accuracy=float(s.llm_acc[j]),
            test_share_routed=float((s.chosen == j).mean()),
            cost_basis=cost_basis.get(m, ""),
        )
        for j, m in enumerate(pool)
    ]


def _metrics(s: _Scores, cost: np.ndarray) -> dict[str, float]:
    """MLflow metrics, named by split and unit; QNC may be inf (the registry logs it as absent)."""
    return {
        "test_audc": s.audc,
        "test_zero_router_audc": s.zero_audc,
        "test_audc_gain_vs_zero_router": s.audc - s.zero_audc,
        "test_qnc_fraction_of_best_cost": s.qnc,
        "test_zero_router_qnc_fraction_of_best_cost": s.zero_qnc,
        "test_accuracy_at_default_cost_weight": s.accuracy_at_default,
        "test_mean_cost_usd_per_query_at_default_cost_weight": s.cost_at_default,
        "test_best_llm_accuracy": float(s.llm_acc[s.best]),
        "test_best_llm_cost_usd_per_query": float(s.llm_cost[s.best]),
        "validation_cheapest_llm_cost_usd_per_query": float(cost.min()),
        "validation_priciest_llm_cost_usd_per_query": float(cost.max()),
    }


def _headline(s: _Scores, pool: list[str]) -> dict:
    """The asset's headline numbers, rounded, their units in short names (the UI draws a long key over its
    value): ``default_*`` are the test prompts routed at the default cost weight."""
    return {
        "audc": round(s.audc, 4),
        "zero_audc": round(s.zero_audc, 4),
        "audc_gain_vs_zero": round(s.audc - s.zero_audc, 4),
        "qnc_of_best_cost": round(s.qnc, 3) if math.isfinite(s.qnc) else f"never: {_no_qnc(pool, s)}",
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


def _figures(s: _Scores, uni: UniRouter, pool: list[str], n_test: int) -> dict:
    spread = s.llm_cost.max() > s.llm_cost.min()
    return {
        "deferral_curve.png": plot_deferral_curves(
            {"UniRoute": s.curve, "ZeroRouter (prompt-blind)": s.zero_curve},
            single_llms=pl.DataFrame({"model": pool, "cost": s.llm_cost, "accuracy": s.llm_acc}),
            cost_range=(s.llm_cost.min(), s.llm_cost.max()) if spread else None,
            title=f"Deferral curves on {n_test:,} test prompts",
            cost_label="average cost per prompt (USD)",
        ),
        "psi_heatmap.png": plot_psi_heatmap(uni.psi_, uni.llms_),
    }


def _plots(figures: dict) -> dict[str, dg.MetadataValue]:
    """The figures as Markdown images (then closed)."""
    from matplotlib import pyplot as plt

    plots = {name.removesuffix(".png"): markdown_image(figure, name) for name, figure in figures.items()}
    for figure in figures.values():
        plt.close(figure)
    return plots


def _pool_table(entries: list["registry.PoolEntry"], left_out: dict[str, str]) -> dg.MetadataValue:
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


def _datasets(prompts: pl.DataFrame, validation_ids: list[str], test_ids: np.ndarray) -> str:
    """``name (n validation, m test prompts)`` of each dataset the router was fitted and scored on."""
    used = prompts.filter(
        ((pl.col("split") == "validation") & pl.col("prompt_id").is_in(list(validation_ids)))
        | ((pl.col("split") == "test") & pl.col("prompt_id").is_in(test_ids.tolist()))
    )
    counts = used.group_by("dataset", "split").len().sort("dataset")
    parts = []
    for (name,), group in counts.group_by(["dataset"], maintain_order=True):
        n = dict(group.select("split", "len").iter_rows())
        parts.append(f"{name} ({n.get('validation', 0):,} validation, {n.get('test', 0):,} test prompts)")
    return "; ".join(parts)


def _no_qnc(pool: list[str], s: _Scores) -> str:
    """Why QNC has no value: what it would have had to reach."""
    best, accuracy, cost = pool[s.best], s.llm_acc[s.best], s.llm_cost[s.best]
    if not cost > 0:
        return f"the most accurate LLM ({best}) costs nothing: no fraction of its cost to report"
    return f"no budget on the test deferral curve reaches the most accurate LLM ({best}, accuracy {accuracy:.4f})"


def _significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits (USD per query spans orders of magnitude)."""
    return float(f"{value:.{digits}g}")


def _check_one_psi(uni: UniRouter, stored: dict[str, np.ndarray]) -> None:
    """The router's Psi must be the features ``llm_error_features`` stored: grades that changed since make them
    stale, and the router waits for the features to follow rather than route on a Psi nobody can inspect."""
    stale = [m for j, m in enumerate(uni.llms_) if not np.allclose(uni.psi_[j], stored[m], atol=1e-9, equal_nan=True)]
    if stale:
        raise dg.Failure(
            f"stored features of {stale} differ from their current grades: re-materialise llm_error_features "
            "for them (automation does once their grades' checks pass), then the router"
        )
