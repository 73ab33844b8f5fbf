"""Routing quality on MMLU-Pro, following the UniRoute paper's protocol (arXiv 2502.08773).

Per seed: prompts split 60/10/30 (train/validation/test, stratified by category); the 29 LLMs split into 14
training and 15 unseen LLMs (by default half the pool, rounded down, learns the map: ``--training-llms``).
Routers choose among the unseen LLMs only, whose test outcomes are used for
nothing but scoring (and the Oracle). K (and KNN's k) is chosen per seed by routing the *training* LLMs on
validation prompts (5-fold cross-fitting: features from 4/5, routed on 1/5) and keeping the best AUDC.

    python -m benchmarks.routing_quality            # stratified sample of 3,000 prompts
    python -m benchmarks.routing_quality --full     # every prompt (embedding ~10 min once, then cached)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME, load_routing_data
from profiling.importers import stratified_sample
from router_core import (
    BACKENDS,
    DEFAULT_EMBEDDER,
    ClusterMap,
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
    assign_splits,
    deferral_curve,
    error_matrix,
    evaluate_router,
    plot_deferral_curves,
    single_llm_points,
    summarize_curve,
)
from router_core.frames import value_matrix

SPLITS = {"train": 0.6, "validation": 0.1, "test": 0.3}
EMBEDDER_DIR = DATA_HOME / "embedders"  # the embedder's ONNX exports and distilled static models, made once per machine
OLD_EMBEDDER_DIRS = (DATA_HOME / "onnx",)  # where they were made before: still read there
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


#: The share of the pool the cluster map may learn from by default (the paper's 14 of 29 LLMs); the rest are unseen.
TRAINING_SHARE = 0.5


def training_llm_count(n_llms: int, requested: int | None = None) -> int:
    """How many LLMs train the map: ``requested``, else :data:`TRAINING_SHARE` of ``n_llms`` (rounded down); at
    least one, and at least two left unseen to route among. A count that does not fit is a ``ValueError``."""
    count = int(n_llms * TRAINING_SHARE) if requested is None else requested
    if not 1 <= count <= n_llms - 2:
        raise ValueError(
            f"--training-llms {count}: the dataset has {n_llms} LLMs; between 1 and {n_llms - 2} may train the map "
            "(at least 2 are left unseen to route among)"
        )
    return count


def split_prompts_and_llms(
    data: Data, seed: int, n_training_llms: int | None = None, validation_share: float = 0.1
) -> Split:
    """Stratified train/validation/test prompt split and a training/unseen LLM split, both redrawn per seed
    (``n_training_llms``: see :func:`training_llm_count`).

    The test share is always the last 30% of each category's shuffled order, so ablations with a larger
    validation share (taken from train) are scored on the very same test prompts.
    """
    train_share = 1 - SPLITS["test"] - validation_share
    shares = {"train": train_share, "validation": validation_share, "test": SPLITS["test"]}
    split = assign_splits(data.prompts, shares, seed)["split"]
    rows = {name: np.flatnonzero((split == name).to_numpy()) for name in shares}
    llm_order = np.random.default_rng(seed).permutation(len(data.models))
    n_training_llms = training_llm_count(len(data.models), n_training_llms)
    return Split(
        **rows,
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
    return summarize_curve(curve, scores, costs.estimate, costs.realized)


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


class SeedContext:
    """One seed's split and features, with cluster maps fitted once per (kind, K, params) and timed."""

    def __init__(self, data: Data, seed: int, args: argparse.Namespace, variant: Variant) -> None:
        self.data, self.seed = data, seed
        self.split = split_prompts_and_llms(data, seed, args.training_llms, variant.validation_share)
        self.x = with_length_feature(data, self.split.train) if variant.with_length else data.embeddings
        self._maps: dict[tuple, tuple[ClusterMap, float]] = {}
        self.last_fit_s = 0.0  # fit time of the cluster map handed out last

    def _cached(self, key: tuple, fit: Callable[[], ClusterMap]) -> ClusterMap:
        if key not in self._maps:
            start = time.perf_counter()
            self._maps[key] = (fit(), time.perf_counter() - start)
        cmap, self.last_fit_s = self._maps[key]
        return cmap

    def kmeans(self, k: int, temperature: float | None = None) -> ClusterMap:
        x_train = self.x[self.split.train]
        return self._cached(
            ("kmeans", k, temperature), lambda: KMeansClusterMap(k, self.seed, temperature).fit(x_train)
        )

    def learned(self, k: int) -> ClusterMap:
        x_train = self.x[self.split.train]
        errors = 1 - self.data.scores[np.ix_(self.split.train, self.split.training_llms)]
        return self._cached(("learned", k), lambda: LearnedClusterMap(k, self.seed).fit(x_train, errors))


def with_length_feature(data: Data, train_rows: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Embeddings plus one column: the prompt's standardised log length (statistics from training prompts)."""
    log_len = np.log(data.prompts["text"].str.len_chars().to_numpy().astype(float))
    z = (log_len - log_len[train_rows].mean()) / log_len[train_rows].std()
    return np.column_stack([data.embeddings, weight * z])


def evaluate(
    method: str, router: Router, fit_s: float, ctx: SeedContext, costs: Costs, mode: str, k: int | None
) -> Result:
    x_test = ctx.x[ctx.split.test]
    scores = ctx.data.scores[np.ix_(ctx.split.test, ctx.split.unseen_llms)]
    start = time.perf_counter()
    router.route(x_test, cost_weight=1.0)  # one routing pass: the cost that matters at serving time
    route_s = time.perf_counter() - start
    area, q, curve = evaluate_router(router, x_test, scores, costs.realized)  # router's costs = costs.estimate
    return Result(method, ctx.seed, mode, area, q, k, fit_s, route_s, curve)


def run_seed(data: Data, seed: int, args: argparse.Namespace) -> list[Result]:
    """Every method on one seed, under both cost modes."""
    results: list[Result] = []
    base = SeedContext(data, seed, args, VARIANTS[0])
    split = base.split
    names = [data.models[j] for j in split.unseen_llms]
    e_val_new = 1 - data.scores[np.ix_(split.validation, split.unseen_llms)]
    for mode in COST_MODES:
        test_costs = costs_for(data, mode, split.unseen_llms, split.validation, split.test)
        fixed = {
            "Oracle": (OracleRouter(), split.test, 1 - data.scores[np.ix_(split.test, split.unseen_llms)]),
            "Random": (RandomRouter(seed=seed), split.validation, e_val_new),
            "ZeroRouter": (ZeroRouter(), split.validation, e_val_new),
        }
        for method, (router, rows, errors) in fixed.items():
            start = time.perf_counter()
            router.fit_arrays(data.embeddings[rows], errors, names, test_costs.estimate)
            results.append(evaluate(method, router, time.perf_counter() - start, base, test_costs, mode, None))
    variants = VARIANTS + (ABLATIONS if args.ablations else [])
    contexts = {(False, 0.1): base}
    for variant in variants:
        key = (variant.with_length, variant.validation_share)
        ctx = contexts.setdefault(key, SeedContext(data, seed, args, variant))
        results += tune_and_evaluate(variant, ctx, args)
    return results


def tune_and_evaluate(variant: Variant, ctx: SeedContext, args: argparse.Namespace) -> list[Result]:
    """Pick the variant's K (or k) by cross-fitted validation AUDC of the training LLMs, then score it on test."""
    split, data = ctx.split, ctx.data
    x_val = ctx.x[split.validation]
    s_val_train = data.scores[np.ix_(split.validation, split.training_llms)]
    e_val_new = 1 - data.scores[np.ix_(split.validation, split.unseen_llms)]
    names = [data.models[j] for j in split.unseen_llms]
    grid = args.knn_grid if variant.grid == "k" else args.k_grid
    results = []
    for mode in COST_MODES:
        val_costs = costs_for(data, mode, split.training_llms, split.validation, split.validation)
        test_costs = costs_for(data, mode, split.unseen_llms, split.validation, split.test)
        make = partial(variant.make, ctx)
        val_audc = {k: crossfit_audc(partial(make, k), x_val, s_val_train, val_costs, ctx.seed) for k in grid}
        best_k = max(grid, key=lambda k: val_audc[k])
        start = time.perf_counter()
        router = make(best_k).fit_arrays(x_val, e_val_new, names, test_costs.estimate)
        fit_s = time.perf_counter() - start + (ctx.last_fit_s if variant.grid == "K" else 0.0)
        results.append(evaluate(variant.name, router, fit_s, ctx, test_costs, mode, best_k))
    return results


@dataclass(frozen=True)
class Variant:
    """A router tuned on validation: ``make(ctx, k)`` builds it for the hyper-parameter ``k`` ("K" or "k")."""

    name: str
    grid: str
    make: Callable[[SeedContext, int], Router]
    base: str | None = None  # for an ablation: the method it modifies
    with_length: bool = False
    validation_share: float = 0.1


VARIANTS = [
    Variant("KNN", "k", lambda ctx, k: KNNRouter(n_neighbors=k)),
    Variant("UniRoute-KMeans", "K", lambda ctx, k: UniRouter(ctx.kmeans(k))),
    Variant("UniRoute-LearnedMap", "K", lambda ctx, k: UniRouter(ctx.learned(k))),
]
KM, LM = "UniRoute-KMeans", "UniRoute-LearnedMap"
ABLATIONS = [
    Variant("KMeans + shrinkage 3", "K", lambda ctx, k: UniRouter(ctx.kmeans(k), shrinkage=3.0), KM),
    Variant("LearnedMap + shrinkage 3", "K", lambda ctx, k: UniRouter(ctx.learned(k), shrinkage=3.0), LM),
    Variant("KMeans soft (T=0.05)", "K", lambda ctx, k: UniRouter(ctx.kmeans(k, temperature=0.05)), KM),
    Variant("KMeans + prompt length", "K", lambda ctx, k: UniRouter(ctx.kmeans(k)), KM, with_length=True),
    Variant("LearnedMap + prompt length", "K", lambda ctx, k: UniRouter(ctx.learned(k)), LM, with_length=True),
    Variant("KMeans, 20% validation", "K", lambda ctx, k: UniRouter(ctx.kmeans(k)), KM, validation_share=0.2),
    Variant("LearnedMap, 20% validation", "K", lambda ctx, k: UniRouter(ctx.learned(k)), LM, validation_share=0.2),
]


def cached_embedder(model: str, **options) -> Embedder:
    """``Embedder(model, **options)`` keeping its export or distilled model under :data:`EMBEDDER_DIR`."""
    return Embedder(model, cache_dir=EMBEDDER_DIR, old_cache_dirs=OLD_EMBEDDER_DIRS, **options)


def load_data(args: argparse.Namespace, embedder: Embedder) -> Data:
    """Load the dataset, sample it, embed the prompts with ``embedder`` (cached)."""
    ds = load_routing_data(args.data)
    prompts = ds.prompts if args.full else stratified_sample(ds.prompts, args.sample, seed=0)
    models = ds.llms["model"].to_list()
    ids = prompts["prompt_id"].to_list()
    scores = 1 - error_matrix(ds.outcomes, ids, models)
    token_cost = value_matrix(ds.outcomes, ids, models, "cost_usd")
    embeddings = EmbeddingCache(args.cache_dir).embed(embedder, prompts["text"].to_list())
    price = ds.llms["cost"].to_numpy()
    return Data(prompts, models, embeddings, scores, price, token_cost)


def measure_embedding_rate(embedder: Embedder, texts: list[str], n: int = 128) -> float:
    """Prompts/s of embedding ``n`` prompts afresh (model already loaded), measured in this run."""
    sample = list(np.random.default_rng(0).choice(texts, size=min(n, len(texts)), replace=False))
    embedder.embed(sample[:8])  # warm-up
    start = time.perf_counter()
    embedder.embed(sample)
    return len(sample) / (time.perf_counter() - start)


MAIN_METHODS = ["Oracle", "Random", "ZeroRouter", "KNN", "UniRoute-KMeans", "UniRoute-LearnedMap"]


def summarize(results: list[Result]) -> pl.DataFrame:
    """Per (method, seed, cost mode): AUDC, QNC, and AUDC gains over ZeroRouter and over an ablation's base."""
    frame = pl.DataFrame(
        [
            {
                "method": r.method,
                "seed": r.seed,
                "cost_mode": r.cost_mode,
                "audc": r.audc,
                "qnc": r.qnc,
                "k": r.k,
                "fit_s": r.fit_s,
                "route_s": r.route_s,
            }
            for r in results
        ]
    )
    bases = {v.name: v.base for v in ABLATIONS}
    keys = ["seed", "cost_mode"]
    zero = frame.filter(pl.col("method") == "ZeroRouter").select(*keys, pl.col("audc").alias("zero_audc"))
    base = frame.select(*keys, pl.col("method").alias("base"), pl.col("audc").alias("base_audc"))
    return (
        frame.with_columns(pl.col("method").replace_strict(bases, default=None).alias("base"))
        .join(zero, on=keys)
        .join(base, on=[*keys, "base"], how="left")
        .with_columns(
            (pl.col("audc") - pl.col("zero_audc")).alias("delta_zero"),
            (pl.col("audc") - pl.col("base_audc")).alias("delta_base"),
        )
    )


def _aggregate(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.group_by("method", maintain_order=True).agg(
        pl.col("audc").mean().alias("audc_mean"),
        pl.col("audc").std().fill_null(0).alias("audc_std"),
        pl.col("qnc").mean().alias("qnc_mean"),
        pl.col("qnc").std().fill_null(0).fill_nan(0).alias("qnc_std"),
        pl.col("delta_zero").mean(),
        (pl.col("delta_zero") > 0).sum().alias("better_than_zero"),
        pl.col("delta_base").mean(),
        (pl.col("delta_base") < 0).sum().alias("worse_than_base"),
        pl.col("k").cast(pl.String).str.join(",").alias("k_per_seed"),
        pl.col("fit_s").mean(),
        pl.col("route_s").mean(),
    )


def print_table(frame: pl.DataFrame, mode: str, n_seeds: int) -> None:
    table = _aggregate(frame.filter(pl.col("method").is_in(MAIN_METHODS)).sort("seed"))
    table = table.sort(pl.col("method").replace_strict({m: i for i, m in enumerate(MAIN_METHODS)}))
    print(f"\n=== cost = {mode}  ({n_seeds} seeds; AUDC / QNC mean +/- std; dAUDC = AUDC - ZeroRouter's) ===")
    head = f"{'method':<22}{'AUDC':>17}{'QNC':>17}{'dAUDC':>9}{'better':>8}  {'K/k per seed':<18}"
    print(head + f"{'fit s':>7}{'route s':>9}")
    for r in table.iter_rows(named=True):
        print(
            f"{r['method']:<22}{r['audc_mean']:>9.4f} +/- {r['audc_std']:.4f}"
            f"{r['qnc_mean']:>9.3f} +/- {r['qnc_std']:.3f}{r['delta_zero']:>+9.4f}"
            f"{r['better_than_zero']:>5}/{n_seeds:<2}  {(r['k_per_seed'] or '-'):<18}"
            f"{r['fit_s']:>7.2f}{r['route_s']:>9.4f}"
        )


def print_ablations(frame: pl.DataFrame, mode: str, n_seeds: int) -> None:
    table = _aggregate(frame.filter(pl.col("base").is_not_null()).sort("seed"))
    if table.height == 0:
        return
    print(f"\n--- ablations, cost = {mode}: each against its base (same seeds, same test prompts) ---")
    print(f"{'variant':<28}{'AUDC':>9}{'vs base':>10}{'worse':>7}{'vs Zero':>10}  {'K per seed':<18}verdict")
    for r in table.iter_rows(named=True):
        keep = r["delta_base"] > 0 and r["worse_than_base"] == 0
        print(
            f"{r['method']:<28}{r['audc_mean']:>9.4f}{r['delta_base']:>+10.4f}{r['worse_than_base']:>4}/{n_seeds:<2}"
            f"{r['delta_zero']:>+10.4f}  {r['k_per_seed']:<18}{'keep' if keep else 'drop'}"
        )


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
            bool((per_seed("UniRoute-LearnedMap")["delta_zero"] > 0).all()),
        ),
        (
            "UniRoute-KMeans beats ZeroRouter's AUDC on the mean",
            bool(per_seed("UniRoute-KMeans")["delta_zero"].mean() > 0),
        ),
        *[
            (f"{m} beats Random by > 0.1 AUDC", bool(mean_audc(m) - mean_audc("Random") > 0.1))
            for m in ("KNN", "UniRoute-KMeans", "UniRoute-LearnedMap")
        ],
        ("Oracle bounds every router on every seed", oracle_bound),
        (f"routing test prompts < 1% of embedding them (measured {route_vs_embed:.4%})", route_vs_embed < 0.01),
    ]


def add_protocol_arguments(parser: argparse.ArgumentParser, seeds: list[int]) -> None:
    """The data and protocol options this benchmark shares with ``benchmarks.embedders``."""
    parser.add_argument(
        "--data",
        default=None,
        help="MMLU-Pro directory (default ../shared/data/mmlu_pro), or a dataset in the generic layout "
        "(results table + optional prompts file, spec.yaml, models.csv; docs/data.md)",
    )
    parser.add_argument("--full", action="store_true", help="use every prompt instead of a stratified sample")
    parser.add_argument("--sample", type=int, default=3000, help="prompts in the stratified sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--k-grid", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="K candidates")
    parser.add_argument("--knn-grid", type=int, nargs="+", default=[5, 10, 25, 50, 100, 200], help="KNN k")
    parser.add_argument(
        "--training-llms",
        type=int,
        default=None,
        # "50%" doubled to "50%%": argparse %-formats help texts
        help=f"LLMs the map may learn from, the rest unseen (default {TRAINING_SHARE:.0%}% of the pool, rounded down)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings", help="embedding cache")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a floor fails (floors hold for --full)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", DEFAULT_EMBEDDER))
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="how vectors are computed")
    parser.add_argument("--max-seq-length", type=int, default=None, help="tokens kept (default: the model's)")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false", help="skip the ablation rows")
    parser.add_argument("--out", type=Path, default=DATA_HOME / "results" / "routing_quality")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    embedder = cached_embedder(args.embedder, max_seq_length=args.max_seq_length, backend=args.backend)
    try:
        data = load_data(args, embedder)
        args.training_llms = training_llm_count(len(data.models), args.training_llms)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    embed_rate = measure_embedding_rate(embedder, data.prompts["text"].to_list())
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
    print(f"\nmachine: {machine_description()}")
    print(f"embedding speed: {embed_rate:.1f} prompts/s -> {embed_s:.1f} s for the {n_test:.0f} test prompts")
    frame = summarize(results)
    first = split_prompts_and_llms(data, args.seeds[0], args.training_llms)
    for mode in COST_MODES:
        print_table(frame.filter(pl.col("cost_mode") == mode), mode, len(args.seeds))
        print_ablations(frame.filter(pl.col("cost_mode") == mode), mode, len(args.seeds))
        plot_first_seed(results, data, first, mode, args)
    floors_frame = frame.filter((pl.col("cost_mode") == "flat") & pl.col("method").is_in(MAIN_METHODS))
    route_s = floors_frame.filter(pl.col("method").str.starts_with("UniRoute"))["route_s"].max()
    sampled = "" if args.full else " -- floors are set for --full; a sample only previews them"
    print(f"\nfloors (cost = flat){sampled}:")
    ok = True
    for name, held in check_floors(floors_frame, route_s / embed_s):
        ok &= held
        print(f"  [{'PASS' if held else 'FAIL'}] {name}")
    frame.write_csv(args.out / "per_seed.csv")
    print(f"\nresults: {args.out}/per_seed.csv, deferral_curves_*.png; total {time.perf_counter() - start:.0f} s")
    return 0 if ok or not args.strict else 1


def plot_first_seed(results: list[Result], data: Data, split: Split, mode: str, args: argparse.Namespace) -> None:
    """Deferral curves of the main methods on the first seed, with the unseen LLMs as points."""
    seed = args.seeds[0]
    costs = costs_for(data, mode, split.unseen_llms, split.validation, split.test)
    scores = data.scores[np.ix_(split.test, split.unseen_llms)]
    llm_cost, llm_acc = single_llm_points(scores, costs.estimate, costs.realized)
    curves = {r.method: r.curve for r in results if r.cost_mode == mode and r.seed == seed and r.method in MAIN_METHODS}
    fig = plot_deferral_curves(
        curves,
        single_llms=pl.DataFrame({"cost": llm_cost, "accuracy": llm_acc}),
        cost_range=(llm_cost.min(), llm_cost.max()),
        title=f"{len(split.unseen_llms)} unseen LLMs, cost={mode}, seed {seed}",
        cost_label="average cost per prompt (USD per Mtok)" if mode == "flat" else "average cost per prompt (USD)",
    )
    fig.savefig(args.out / f"deferral_curves_{mode}.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
