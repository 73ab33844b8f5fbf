"""Version building: a fitted pool (:func:`router_core.fit_pool`) becomes a registered router version, or is found
to be one already.

:func:`publish` registers nothing when what a version is built from (:data:`IDENTITY_TAGS`) equals a registered
version's; otherwise it runs the champion gate (:mod:`serving.gate`), saves the router with what the pyfunc needs,
registers it with its model card (:mod:`serving.model_card`), metrics and figures, and moves an alias
(:func:`serving.registry.promote`).

A version may also learn from traffic (:func:`traffic_features`, :func:`with_traffic`): its Psi blends validation
errors with the outcomes of requests routed with the same cluster map and embedder; it carries the tag
``features: validation+traffic`` and a fingerprint of those outcomes, and its gate also checks held-out outcomes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from router_core import (
    Embedder,
    PoolFit,
    TrafficErrorStats,
    drop_before_changes,
    save_router,
    split_traffic_outcomes,
    traffic_error_stats,
)
from serving import gate, registry
from serving.model_card import ModelCard, PoolEntry, describe_operating_point

#: Tags that say what a version is: equal to a registered version's, a new version would be that one again.
#: ``features`` and ``traffic_snapshot`` exist only on versions that learned from traffic.
IDENTITY_TAGS = (
    "pool",
    "data_snapshot",
    "cluster_map_version",
    "embedder_id",
    "default_cost_weight",
    "features",
    "traffic_snapshot",
)
#: The ``features`` tag of a version whose Psi blends validation errors with traffic outcomes.
TRAFFIC_FEATURES = "validation+traffic"
#: Metrics with no value when no budget reaches the best LLM's accuracy (logged as absent, with the reason).
QNC_METRICS = ("test_qnc_fraction_of_best_cost", "test_zero_router_qnc_fraction_of_best_cost")


@dataclass(frozen=True)
class Candidate:
    """A version to publish: the fitted pool, its tags (what it is and was built from), its model card and
    figures, and the cluster map's warehouse row."""

    fit: PoolFit
    tags: dict[str, str]
    card: ModelCard
    figures: dict[str, object]
    cluster_map: Mapping
    #: held-out traffic outcomes the gate checks too (a version that learned from traffic); None: test prompts only
    heldout: pl.DataFrame | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TrafficFeatures:
    """Traffic outcomes for a version's features: ``stats`` (of ``used`` outcomes, the features side of
    :func:`router_core.split_traffic_outcomes`, served by the pool), the ``heldout`` side (never used for
    features: the gate's), and how many outcomes were left out as decided under another cluster map or
    embedder (``other_map``)."""

    stats: TrafficErrorStats
    heldout: pl.DataFrame
    used: int
    other_map: int
    confirmed: tuple[tuple[str, int], ...] = ()  #: cells re-checked and found changed (their earlier outcomes left out)
    blend: str = "all"  #: "selective": only where a change is established (:func:`router_core.selective_traffic`)

    def describe(self) -> str:
        """One line for the model card."""
        where = (
            "only in the cells where traffic or a re-check shows a change (validation stands elsewhere)"
            if self.blend == "selective"
            else "in every cell"
        )
        return (
            f"{TRAFFIC_FEATURES}: each LLM's Psi blends its validation errors with {self.used:,} traffic outcomes "
            f"per cluster, {where} (precision-weighted, one outcome worth {self.stats.weight:g} validation prompts; "
            f"validation trusted less as traffic drifts from it beyond noise, set aside where it shows a change); "
            f"{self.heldout.height:,} held out for the champion gate"
        )


@dataclass(frozen=True)
class Published:
    """What :func:`publish` did: ``status`` (one line), the ``version`` and its ``alias`` (or the aliases of the
    identical version found), the gate's verdict (``gate`` and its numbers) and the card as registered."""

    status: str
    version: str
    alias: str
    verdict: dict[str, object]
    card: ModelCard


def candidate(
    fit: PoolFit,
    cluster_map: Mapping,
    embedder_id: str,
    data_snapshot: str,
    prompts: pl.DataFrame,
    val_ids: Sequence[str],
    cost_basis: Mapping[str, str],
    left_out: Mapping[str, str],
    figures: dict[str, object],
) -> Candidate:
    """The version ``fit`` would be: its tags and model card (``prompts``: ``prompt_id, dataset, split`` of the
    validation and test prompts; ``left_out``: each LLM left out of the pool and why)."""
    pool, s = fit.pool, fit.scores
    seen = [m for m in pool if m in set(cluster_map["training_llms"])]
    unseen = [m for m in pool if m not in seen]
    tags = {
        "pool": ",".join(pool),
        "embedder_id": embedder_id,
        "cluster_map_version": cluster_map["version"],
        "default_cost_weight": repr(fit.point.cost_weight),
        "default_operating_point": describe_operating_point(fit.point),
        "audc": f"{s.audc:.6f}",
        "test_prompts": str(len(fit.test_ids)),
        # a gain over LLMs the map was trained on is not an unseen-LLM result
        "cluster_map_training_llms": ",".join(seen),
        "unseen_llms": ",".join(unseen),
        "test_costs": "per query" if fit.per_query_test_costs else "mean validation cost",
        # what this version was built and scored on: validation and test ids, outcomes and costs of the pool
        "data_snapshot": data_snapshot,
    }
    card = ModelCard(
        pool=pool_entries(fit, cost_basis),
        test_prompts=len(fit.test_ids),
        audc=s.audc,
        zero_audc=s.zero_audc,
        qnc=s.qnc,
        zero_qnc=s.zero_qnc,
        best_llm=pool[s.best],
        cluster_map_kind=cluster_map["kind"],
        n_clusters=int(cluster_map["n_clusters"]),
        cluster_map_version=cluster_map["version"],
        embedder_id=embedder_id,
        dataset=datasets(prompts, val_ids, fit.test_ids),
        default_cost_weight=fit.point.cost_weight,
        data_snapshot=data_snapshot,
        unseen_llms=unseen,
        test_costs=tags["test_costs"],
        default_operating_point=tags["default_operating_point"],
        left_out=dict(left_out),
    )
    return Candidate(fit, tags, card, figures, cluster_map)


def publish(
    new: Candidate,
    model_name: str,
    experiment_id: str,
    run_dir: Path,
    embedder: Embedder,
    gate_tolerance: float = gate.DEFAULT_TOLERANCE,
    traffic_tolerance: float = gate.DEFAULT_TRAFFIC_TOLERANCE,
) -> Published:
    """Register ``new`` unless a registered version is identical (:func:`serving.registry.identical_version`),
    after the champion gate (with ``new.heldout``: on held-out traffic too, :func:`serving.gate.with_traffic`);
    ``run_dir`` receives the router's files."""
    same = registry.identical_version(model_name, new.tags, IDENTITY_TAGS)
    if same is not None:
        version, alias = str(same.version), ",".join(sorted(same.aliases)) or "no alias"
        what = (
            "embedder, default cost weight and traffic outcomes"
            if new.heldout is not None
            else ("embedder and default cost weight")
        )
        status = f"unchanged: pool, data snapshot, cluster map, {what} equal v{version}'s ({alias}); no new version"
        return Published(status, version, alias, {"gate": f"not run: {status}"}, new.card)
    fit, s = new.fit, new.fit.scores
    champion = registry.champion_router(model_name)
    decision = gate.judge(
        s.curve,
        s.cost_range,
        champion,
        registry.champion_version(model_name),
        fit.pool,
        fit.x_test,
        fit.test_scores,
        fit.realised,
        gate_tolerance,
    )
    if new.heldout is not None:
        decision = gate.with_traffic(
            decision, champion, fit.router, new.heldout, traffic_tolerance, _same_clusters(model_name, new.tags)
        )
    save_router(fit.router, run_dir)
    registry.write_router_meta(run_dir, embedder, fit.point.cost_weight, fit.predicted, fit.val_scores, fit.point)
    card = replace(new.card, gate=decision.reason)
    version = registry.register_router(
        run_dir,
        model_name,
        experiment_id,
        params={
            "cluster_map_kind": new.cluster_map["kind"],
            "n_clusters": new.cluster_map["n_clusters"],
            "pool_size": len(fit.pool),
            "default_cost_weight": fit.point.cost_weight,
            "gate_tolerance": gate_tolerance,
            "test_prompts": len(fit.test_ids),
        },
        metrics=s.metrics(fit.cost),
        tags={**new.tags, "gate": decision.reason},
        figures=new.figures,
        input_example=["What is the derivative of x^2?"],
        run_name=registry.run_name(new.cluster_map["version"], len(fit.pool)),
        card=card,
        absent_reasons={k: s.no_qnc(fit.pool) for k in QNC_METRICS},
        json_artifacts={"pool.json": [vars(entry) for entry in card.pool]},
    )
    alias = registry.promote(
        model_name, version, better=decision.promote, reason=f"the pipeline's gate: {decision.reason}"
    )
    return Published(
        f"registered v{version} ({alias})", version, alias, {"gate": decision.reason, **decision.numbers()}, card
    )


def _same_clusters(model_name: str, tags: Mapping[str, str]) -> bool:
    """Whether the champion routes with the cluster map and embedder of a version tagged ``tags``."""
    same = registry.versions_tagged(model_name, {k: tags[k] for k in ("cluster_map_version", "embedder_id")})
    return registry.champion_version(model_name) in same


def pool_entries(fit: PoolFit, cost_basis: Mapping[str, str]) -> list[PoolEntry]:
    """Each pool LLM's line of the model card."""
    s = fit.scores
    return [
        PoolEntry(
            llm=m,
            usd_per_query=float(fit.cost[j]),
            validation_accuracy=float(1 - np.nanmean(fit.val_errors[:, j])),
            validation_coverage=float(1 - np.isnan(fit.val_errors[:, j]).mean()),
            test_accuracy=float(s.llm_acc[j]),
            test_share_routed=float((s.chosen == j).mean()),
            cost_basis=cost_basis.get(m, ""),
        )
        for j, m in enumerate(fit.pool)
    ]


def datasets(prompts: pl.DataFrame, validation_ids: Sequence[str], test_ids: np.ndarray) -> str:
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


def traffic_features(
    outcomes: pl.DataFrame,
    model_name: str,
    cluster_map: Mapping,
    embedder_id: str,
    pool: Sequence[str],
    heldout_fraction: float,
    weight: float = 1.0,
    changes: pl.DataFrame | None = None,
) -> TrafficFeatures:
    """Traffic outcomes (``wh.read_traffic_outcomes``' columns) as features for a version of ``pool`` on
    ``cluster_map`` (its warehouse row) and ``embedder_id``: only outcomes of requests decided by a registered
    version of ``model_name`` with that cluster map and embedder count (their cluster weights mean the same
    clusters); they are split by request id (:func:`router_core.split_traffic_outcomes`) into features and held
    out, and the features side is summed per LLM and cluster (``weight``: see
    :func:`router_core.traffic_error_stats`). ``changes`` (``drift_rechecks`` rows found changed): a changed cell's
    outcomes decided before its change was confirmed are left out (:func:`router_core.drop_before_changes`)."""
    same = registry.versions_tagged(
        model_name, {"cluster_map_version": str(cluster_map["version"]), "embedder_id": embedder_id}
    )
    kept = pl.col("router_version").cast(pl.String).is_in(sorted(same))
    if "embedder_id" in outcomes.columns:
        kept &= pl.col("embedder_id") == embedder_id
    mine = outcomes.filter(kept)
    changes = (changes if changes is not None else pl.DataFrame(schema=_CHANGE_COLUMNS)).filter(
        pl.col("router_version").cast(pl.String).is_in(sorted(same))
    )
    features, heldout = split_traffic_outcomes(drop_before_changes(mine, changes), heldout_fraction)
    stats = traffic_error_stats(features, pool, int(cluster_map["n_clusters"]), weight)
    used = features.filter(pl.col("chosen_llm").is_in(list(pool))).height
    confirmed = tuple(sorted(set(changes.select("llm", pl.col("cluster").cast(pl.Int64)).rows())))
    return TrafficFeatures(stats, heldout, used, outcomes.height - mine.height, confirmed)


_CHANGE_COLUMNS = {"llm": pl.String, "cluster": pl.Int64, "checked_at": pl.Datetime, "router_version": pl.String}


def with_profiles(new: Candidate, partial: Mapping[str, tuple[int, int]]) -> Candidate:
    """``new`` tagged ``profile: partial (n of N)`` when LLMs of its pool have a partial profile (``partial``: each
    such LLM's validation prompts answered and expected; several: ``partial (n1 of N, n2 of N)`` in pool order),
    their names in ``profile_partial_llms``; ``new`` itself when none has."""
    if not partial:
        return new
    counts = ", ".join(f"{answered} of {total}" for answered, total in partial.values())
    tags = {**new.tags, "profile": f"partial ({counts})", "profile_partial_llms": ",".join(partial)}
    said = "; ".join(f"{llm} {answered} of {total} validation prompts" for llm, (answered, total) in partial.items())
    card = replace(new.card, profiles=f"{said} (Psi from PartialProfileEstimator; the rest is being collected)")
    return replace(new, tags=tags, card=card)


def with_traffic(new: Candidate, traffic: TrafficFeatures) -> Candidate:
    """``new`` (a candidate fitted with ``traffic.stats``) as a version that learned from traffic: tagged
    ``features: validation+traffic`` with a fingerprint of the outcomes' statistics (so the same outcomes make the
    same version, found "unchanged"), its card saying so, its gate checking ``traffic.heldout`` too."""
    tags = {
        **new.tags,
        "features": TRAFFIC_FEATURES,
        "traffic_snapshot": traffic_snapshot(traffic.stats),
        "traffic_outcomes": str(traffic.used),
        "traffic_heldout_outcomes": str(traffic.heldout.height),
    }
    return replace(new, tags=tags, card=replace(new.card, features=traffic.describe()), heldout=traffic.heldout)


def traffic_snapshot(stats: TrafficErrorStats) -> str:
    """A short content hash of traffic statistics: equal outcomes per LLM and cluster, equal snapshot."""
    digest = hashlib.sha256()
    for name, array in sorted(stats.to_arrays().items()):
        if array.dtype.kind == "f":  # sums in another row order may differ in the last bits
            array = np.round(array, 9)
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]
