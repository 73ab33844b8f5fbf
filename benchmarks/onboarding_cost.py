"""Onboarding from part of the validation set (issue 26's floors): unseen-LLM AUDC against the share asked.

The routing benchmark's protocol (:mod:`benchmarks.routing_quality`): per seed the same prompt split, the same
training/unseen LLM split, test prompts, cost sweep and ZeroRouter (fitted on the unseen LLMs' *full* validation
profiles). The cluster map is the default router's (learned, K=16; ``--map``, ``--k-grid``: several K are chosen
between by routing_quality's cross-fitted validation AUDC). Each unseen LLM is then asked only the first
``fraction`` of the validation prompts in an order from :class:`router_core.OnboardingPlanner` (fitted on the
training LLMs' validation errors: the known LLMs), and its Psi comes from :class:`router_core.PartialProfileEstimator`
(its prior from the same known LLMs). The router routes the unseen LLMs with those Psi; AUDC on the test prompts.
``adaptive`` asks in batches of 2.5% of the validation prompts, each batch chosen from the answers so far.

Every unseen LLM is asked the same share, so the estimators choose their shrinkage (``cluster_weight="cv"``) for
a pool asked alike (``pool="partial"``); the row ``(mixed)`` chooses it as the pipeline does (``pool="mixed"``).

Provisional pool: each unseen LLM in turn is the provisional (newest) one, profiled at ``fraction`` with the
chosen order and estimator as the pipeline runs them (``pool="mixed"``), the other unseen LLMs fully profiled;
"the pool without it" is the other unseen LLMs alone. Both AUDCs are taken over the whole unseen pool's cost
range (the hull is flat beyond a pool's costliest LLM).

    python -m benchmarks.onboarding_cost                 # stratified sample of 3,000 prompts, 5 seeds
    python -m benchmarks.onboarding_cost --data DIR      # any dataset the routing benchmark loads
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_quality import (
    VARIANTS,
    Data,
    SeedContext,
    add_protocol_arguments,
    cached_embedder,
    costs_for,
    crossfit_audc,
    load_data,
    training_llm_count,
)
from router_core import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_EMBEDDER,
    DEFAULT_ESTIMATOR,
    DEFAULT_ORDER,
    ClusterMap,
    OnboardingPlanner,
    PartialProfileEstimator,
    UniRouter,
    ZeroRouter,
    audc,
    deferral_curve,
    evaluate_router,
    single_llm_points,
)

FRACTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)
CHOSEN = f"{DEFAULT_ORDER} + {DEFAULT_ESTIMATOR}"
BASELINE = "random + plain"
#: (order, estimator, pool) compared; the chosen one (router_core's defaults) and the baseline always among them.
#: Every unseen LLM is asked the same share, so the estimators judge Psi as for a pool asked alike ("partial");
#: the "mixed" row judges it as the pipeline does (one new LLM among fully profiled ones), as the provisional rows.
METHODS = {
    BASELINE: ("random", "plain", "partial"),
    "random + lowrank": ("random", "lowrank", "partial"),
    "stratified + lowrank": ("stratified", "lowrank", "partial"),
    "discriminative + plain": ("discriminative", "plain", "partial"),
    "discriminative + difficulty": ("discriminative", "difficulty", "partial"),
    "discriminative + lowrank": ("discriminative", "lowrank", "partial"),
    "discriminative + irt": ("discriminative", "irt", "partial"),
    f"{CHOSEN} (mixed)": (DEFAULT_ORDER, DEFAULT_ESTIMATOR, "mixed"),
    "adaptive + lowrank": ("adaptive", "lowrank", "partial"),
}
ADAPTIVE_BATCH = 0.025  # share of the validation prompts asked per adaptive step
FLOORS = {0.5: 0.9, 0.2: 0.6}  # fraction -> share of the full profile's gain over ZeroRouter it keeps
PROVISIONAL_TOLERANCE = 0.002


@dataclass
class Seed:
    """One seed's aligned arrays: validation cluster weights, known and new LLMs' validation errors, test side."""

    weights: np.ndarray  # (n_val, K)
    known: np.ndarray  # (n_val, M_train)
    new: np.ndarray  # (n_val, L)
    phi_test: np.ndarray  # (n_test, K)
    scores: np.ndarray  # (n_test, L)
    costs: np.ndarray  # (L,)
    realized: np.ndarray | None
    cost_range: tuple[float, float]
    zero_audc: float


def prepare_seed(data: Data, seed: int, args: argparse.Namespace) -> tuple[Seed, int]:
    """The routing benchmark's split, costs, cluster map (K picked as it does) and ZeroRouter for one seed."""
    ctx = SeedContext(data, seed, args, VARIANTS[0])
    split = ctx.split
    make_map = ctx.learned if args.map == "learned" else ctx.kmeans
    k = pick_k(ctx, make_map, args)
    cmap: ClusterMap = make_map(k)
    costs = costs_for(data, args.cost_mode, split.unseen_llms, split.validation, split.test)
    new = 1 - data.scores[np.ix_(split.validation, split.unseen_llms)]
    scores = data.scores[np.ix_(split.test, split.unseen_llms)]
    names = [data.models[j] for j in split.unseen_llms]
    zero = ZeroRouter().fit_arrays(data.embeddings[split.validation], new, names, costs.estimate)
    zero_audc = evaluate_router(zero, data.embeddings[split.test], scores, costs.realized)[0]
    llm_cost, _ = single_llm_points(scores, costs.estimate, costs.realized)
    return Seed(
        weights=cmap.transform(data.embeddings[split.validation]),
        known=1 - data.scores[np.ix_(split.validation, split.training_llms)],
        new=new,
        phi_test=cmap.transform(data.embeddings[split.test]),
        scores=scores,
        costs=costs.estimate,
        realized=costs.realized,
        cost_range=(float(llm_cost.min()), float(llm_cost.max())),
        zero_audc=zero_audc,
    ), k


def pick_k(ctx: SeedContext, make_map, args: argparse.Namespace) -> int:
    """The single K of ``--k-grid``, or the best by the routing benchmark's cross-fitted validation AUDC."""
    if len(args.k_grid) == 1:
        return args.k_grid[0]
    split, data = ctx.split, ctx.data
    val_costs = costs_for(data, args.cost_mode, split.training_llms, split.validation, split.validation)
    s_val = data.scores[np.ix_(split.validation, split.training_llms)]
    x_val = data.embeddings[split.validation]
    val_audc = {
        k: crossfit_audc(partial(lambda k: UniRouter(make_map(k)), k), x_val, s_val, val_costs, ctx.seed)
        for k in args.k_grid
    }
    return max(args.k_grid, key=lambda k: val_audc[k])


def asked_counts(n_val: int) -> list[int]:
    """Prompts asked at each of :data:`FRACTIONS` (at least one)."""
    return [max(1, round(f * n_val)) for f in FRACTIONS]


def asked_masks(s: Seed, order: str, seed: int) -> np.ndarray:
    """(F, n_val, L) which validation prompts each new LLM was asked at each fraction."""
    n_val, n_new = s.new.shape
    planner = OnboardingPlanner(order, random_state=seed).fit(s.weights, s.known)
    masks = np.zeros((len(FRACTIONS), n_val, n_new), dtype=bool)
    counts = asked_counts(n_val)
    for j in range(n_new):
        sequence = planner.order() if order != "adaptive" else adaptive_sequence(planner, s.new[:, j], counts[-1])
        for f, count in enumerate(counts):
            masks[f, sequence[:count], j] = True
    return masks


def adaptive_sequence(planner: OnboardingPlanner, errors: np.ndarray, total: int) -> np.ndarray:
    """The prompts an adaptive planner asks one LLM, batch by batch, each batch chosen from the answers so far."""
    batch = max(1, round(ADAPTIVE_BATCH * len(errors)))
    asked = np.zeros(0, dtype=np.int64)
    while len(asked) < total:
        step = planner.next_prompts(asked, errors[asked], min(batch, total - len(asked)))
        asked = np.concatenate([asked, step])
    return asked


def route_audc(s: Seed, psi: np.ndarray, llms: np.ndarray | None = None) -> float:
    """Test AUDC of routing the unseen LLMs (or ``llms`` of them) with Psi ``psi`` (L, K), over the pool's range."""
    llms = np.arange(s.new.shape[1]) if llms is None else llms
    realized = None if s.realized is None else s.realized[:, llms]
    curve = deferral_curve(s.phi_test @ psi[llms].T, s.costs[llms], s.scores[:, llms], realized)
    return audc(curve, s.cost_range)


def run_seed(s: Seed, seed: int) -> tuple[list[dict], list[dict]]:
    """Every method at every fraction; and the chosen one's provisional pool against the pool without it."""
    rows = []
    n_val = s.new.shape[0]
    alone = {}  # the chosen order's partial profiles judged as the pipeline does: for the provisional rows
    for method, (order, estimator_name, pool) in METHODS.items():
        masks = asked_masks(s, order, seed)
        estimator = PartialProfileEstimator(method=estimator_name, pool=pool).fit(s.weights, s.known)
        for f, (fraction, count) in enumerate(zip(FRACTIONS, asked_counts(n_val), strict=True)):
            psi = estimator.estimate(np.where(masks[f], s.new, np.nan)).psi
            if (order, estimator_name, pool) == (DEFAULT_ORDER, DEFAULT_ESTIMATOR, "mixed"):
                alone[fraction] = psi
            row = {"seed": seed, "method": method, "fraction": fraction, "asked": count, "n_validation": n_val}
            rows.append(row | {"audc": route_audc(s, psi), "zero_audc": s.zero_audc})
    return rows, [provisional_row(s, seed, fraction, psi, alone[1.0]) for fraction, psi in alone.items()]


def provisional_row(s: Seed, seed: int, fraction: float, psi: np.ndarray, full: np.ndarray) -> dict:
    """Each unseen LLM in turn provisional (``psi``), the others full: AUDC minus that of the others alone."""
    everyone = np.arange(s.new.shape[1])
    deltas = []
    for j in everyone:
        mixed = full.copy()
        mixed[j] = psi[j]
        deltas.append(route_audc(s, mixed) - route_audc(s, full, np.delete(everyone, j)))
    return {"seed": seed, "fraction": fraction, "delta_mean": float(np.mean(deltas)), "delta_worst": min(deltas)}


def summarize(frame: pl.DataFrame) -> pl.DataFrame:
    """Per (method, fraction): AUDC mean/std over seeds, gain over ZeroRouter and its share of the full profile's."""
    full_gain = frame.filter(pl.col("fraction") == 1.0, pl.col("method") == CHOSEN)
    full_gain = (full_gain["audc"] - full_gain["zero_audc"]).mean()
    return (
        frame.group_by("method", "fraction", maintain_order=True)
        .agg(
            pl.col("asked").mean(),
            pl.col("audc").mean().alias("audc_mean"),
            pl.col("audc").std().fill_null(0).alias("audc_std"),
            (pl.col("audc") - pl.col("zero_audc")).mean().alias("gain"),
        )
        .with_columns((pl.col("gain") / full_gain).alias("share_of_full_gain"))
    )


def print_table(table: pl.DataFrame, k_per_seed: list[int], n_seeds: int) -> None:
    fractions = sorted(table["fraction"].unique().to_list())
    asked = {r["fraction"]: r["asked"] for r in table.iter_rows(named=True)}
    n_val = max(asked.values())
    k = round(float(np.mean(k_per_seed)))
    print(f"\n=== unseen-LLM AUDC vs share of the validation set asked ({n_seeds} seeds, mean; K {k_per_seed})")
    print("    gain = AUDC - ZeroRouter's (full profiles); % = share of the full profile's gain kept")
    head = "".join(f"{f:>7.0%} ({asked[f]:.0f}, {asked[f] / k:.1f}/cl)" for f in fractions)
    width = max(map(len, METHODS)) + 2
    print(f"{'order + estimator':<{width}}{head}")
    for method in METHODS:
        rows = table.filter(pl.col("method") == method).sort("fraction")
        cells = "".join(f"{r['audc_mean']:>9.4f} {r['share_of_full_gain']:>+7.0%}  " for r in rows.rows(named=True))
        print(f"{method:<{width}}{cells}")
    print(f"(prompts asked of {n_val:.0f} validation prompts; /cl = per cluster on average)")


def check_floors(table: pl.DataFrame, provisional: pl.DataFrame) -> list[tuple[str, bool]]:
    def cell(method: str, fraction: float, column: str) -> float:
        return table.filter(pl.col("method") == method, pl.col("fraction") == fraction)[column].item()

    floors = [
        (
            f"{CHOSEN} at {f:.0%} keeps >= {share:.0%} of the full profile's gain over ZeroRouter "
            f"(measured {cell(CHOSEN, f, 'share_of_full_gain'):.0%})",
            cell(CHOSEN, f, "share_of_full_gain") >= share,
        )
        for f, share in FLOORS.items()
    ]
    partial_fractions = [f for f in FRACTIONS if f < 1.0]
    margins = [cell(CHOSEN, f, "audc_mean") - cell(BASELINE, f, "audc_mean") for f in partial_fractions]
    floors.append(
        (
            f"{CHOSEN} beats {BASELINE} at every fraction < 100% (AUDC margins "
            + ", ".join(f"{m:+.4f}" for m in margins)
            + ")",
            all(m > 0 for m in margins),
        )
    )
    means = provisional.group_by("fraction").agg(pl.col("delta_mean", "delta_worst").mean()).sort("fraction")
    floors.append(
        (
            f"a pool with a provisional LLM is never below the pool without it by more than {PROVISIONAL_TOLERANCE} "
            "(mean of seeds and of each unseen LLM in turn; mean deltas "
            + ", ".join(f"{f:.0%} {d:+.4f}" for f, d in zip(means["fraction"], means["delta_mean"], strict=True))
            + "; worst single LLM, mean of seeds: "
            + ", ".join(f"{d:+.4f}" for d in means["delta_worst"])
            + ")",
            bool((means["delta_mean"] >= -PROVISIONAL_TOLERANCE).all()),
        )
    )
    return floors


def plot(table: pl.DataFrame, zero_gain: float, out: Path, title: str) -> None:
    """AUDC gain over ZeroRouter against the share asked, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        rows = table.filter(pl.col("method") == method).sort("fraction")
        style = {"linewidth": 2.5} if method in (CHOSEN, BASELINE) else {"linewidth": 1, "alpha": 0.7}
        ax.plot(rows["fraction"], rows["gain"], marker="o", label=method, **style)
    ax.axhline(0, color="grey", linestyle=":", label="ZeroRouter (full profiles)")
    ax.axhline(zero_gain, color="black", linestyle="--", linewidth=0.8, label="full profile")
    ax.set_xscale("log")
    ax.set_xticks(list(FRACTIONS), [f"{f:.0%}" for f in FRACTIONS])
    ax.set_xlabel("share of the validation prompts asked of each unseen LLM")
    ax.set_ylabel("AUDC - ZeroRouter's AUDC")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, seeds=[0, 1, 2, 3, 4])
    parser.set_defaults(k_grid=[16])
    parser.add_argument("--map", choices=("learned", "kmeans"), default="learned", help="the cluster map's kind")
    parser.add_argument("--cost-mode", choices=("flat", "tokens"), default="flat")
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", DEFAULT_EMBEDDER))
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="how vectors are computed")
    parser.add_argument("--out", type=Path, default=DATA_HOME / "bench" / "onboarding_cost")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        data = load_data(args, cached_embedder(args.embedder, backend=args.backend))
        args.training_llms = training_llm_count(len(data.models), args.training_llms)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"data: {data.scores.shape[0]} prompts x {len(data.models)} LLMs ({args.training_llms} known)")
    frame, pools, k_per_seed = run_seeds(data, args)
    print(f"\nmachine: {machine_description()}")
    table = summarize(frame)
    print_table(table, k_per_seed, len(args.seeds))
    sampled = "every prompt" if args.full else f"a sample of {args.sample}"
    print(f"\nfloors (cost = {args.cost_mode}, {sampled}, chosen = {CHOSEN}):")
    ok = True
    for name, held in check_floors(table, pools):
        ok &= held
        print(f"  [{'PASS' if held else 'FAIL'}] {name}")
    args.out.mkdir(parents=True, exist_ok=True)
    frame.write_csv(args.out / "per_seed.csv")
    pools.write_csv(args.out / "provisional.csv")
    full_gain = table.filter(pl.col("method") == CHOSEN, pl.col("fraction") == 1.0)["gain"].item()
    plot(table, full_gain, args.out / "audc_vs_fraction.png", f"{data.scores.shape[0]} prompts, {args.map} map")
    print(f"\nresults: per_seed.csv, provisional.csv, audc_vs_fraction.png in {args.out}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if ok or not args.strict else 1


def run_seeds(data: Data, args: argparse.Namespace) -> tuple[pl.DataFrame, pl.DataFrame, list[int]]:
    """Per seed: the methods' AUDC rows, the provisional-pool rows, and the seed's K."""
    rows, provisional, k_per_seed = [], [], []
    for seed in args.seeds:
        t = time.perf_counter()
        s, k = prepare_seed(data, seed, args)
        k_per_seed.append(k)
        methods, pools = run_seed(s, seed)
        rows, provisional = rows + methods, provisional + pools
        print(f"seed {seed}: {s.new.shape[0]} validation prompts, K={k}, {time.perf_counter() - t:.1f} s", flush=True)
    return pl.DataFrame(rows), pl.DataFrame(provisional), k_per_seed


if __name__ == "__main__":
    raise SystemExit(main())
