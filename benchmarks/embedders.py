"""Embedder backends side by side, in one run: speed on the same prompts and routing quality (AUDC) per dataset.

Configurations: sentence-transformers on torch (fp32) at the model's own 256 tokens -- the baseline -- and at
128 tokens; an ONNX export with int8 weights (made locally from the bundled weights, run by ONNX Runtime) at 256,
192 and 128 tokens; a static model2vec model distilled locally from the same weights at 256, 192 and 512 tokens.
Speed: prompts/s embedding the same sample, configurations interleaved round by round (median of the rounds).
Quality: the routing benchmark's protocol (``benchmarks.routing_quality``, no ablations) on each configuration's
vectors, AUDC per method and cost mode, and its change against the baseline. Every dataset named by ``--data``
(MMLU-Pro's layout or the generic one) is measured the same way.

Rule (issue 15): the default backend is the fastest configuration whose worst UniRoute AUDC loss against the
baseline (any method, cost mode) is <= 0.002 on every dataset measured. Floors: the static backend embeds >= 10x
the prompts/s of the current default (``Embedder()``'s configuration) in the same run; the default embeds >= 2x
the baseline's with a worst UniRoute AUDC loss <= 0.002 (issue 6).

    python -m benchmarks.embedders --full                    # MMLU-Pro, 5 seeds (~45 min on 2 cores, once)
    python -m benchmarks.embedders --full --data ../shared/data/mmlu_pro DIR    # and a generic-layout dataset
    python -m benchmarks.embedders --full --backend static   # the baseline and the static configurations only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_quality import Data, add_protocol_arguments, cached_embedder, load_data, run_seed, summarize
from router_core import BACKENDS, DEFAULT_BACKEND, DEFAULT_EMBEDDER, DEFAULT_MAX_SEQ_LENGTH, Embedder, EmbeddingCache

QUALITY_METHODS = ["UniRoute-KMeans", "UniRoute-LearnedMap", "KNN"]
FLOOR_SPEEDUP, FLOOR_AUDC_LOSS = 2.0, 0.002
FLOOR_STATIC_VS_DEFAULT = 10.0


@dataclass(frozen=True)
class Config:
    backend: str
    max_seq_length: int | None  # None: the model's own limit

    @property
    def name(self) -> str:
        return f"{self.backend} @{self.max_seq_length or 'model'}"

    def embedder(self, model: str) -> Embedder:
        return cached_embedder(model, max_seq_length=self.max_seq_length, backend=self.backend)


BASELINE = Config("torch", None)
CONFIGS = [
    BASELINE,
    Config("torch", 128),
    *(Config("onnx-int8", n) for n in (None, 192, 128)),
    *(Config("static", n) for n in (None, 192, 512)),
]


def measure_speed(
    embedders: dict[str, Embedder], texts: list[str], rounds: int, min_seconds: float = 1.0
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Median prompts/s per embedder over ``rounds`` rounds, the embedders taking turns; in a round an embedder
    embeds ``texts`` again until ``min_seconds`` have passed (a static pass takes milliseconds); and each
    embedder's vectors of ``texts`` (from the last pass)."""
    for embedder in embedders.values():
        embedder.embed(texts[:8])  # load (and export or distil) before timing
    rates: dict[str, list[float]] = {name: [] for name in embedders}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, embedder in embedders.items():
            passes, start = 0, time.perf_counter()
            while passes == 0 or time.perf_counter() - start < min_seconds:
                vectors[name] = embedder.embed(texts)
                passes += 1
            rates[name].append(passes * len(texts) / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}, vectors


def audc_table(data: Data, args: argparse.Namespace) -> pl.DataFrame:
    """Mean AUDC over seeds per (method, cost mode) of the routing benchmark's methods on ``data``'s vectors."""
    results = [r for seed in args.seeds for r in run_seed(data, seed, args)]
    frame = summarize(results).filter(pl.col("method").is_in(QUALITY_METHODS))
    return frame.group_by("method", "cost_mode").agg(pl.col("audc").mean())


def dataset_name(data_dir: str | None) -> str:
    return Path(data_dir).name if data_dir else "mmlu_pro"


def measure_dataset(
    args: argparse.Namespace, data_dir: str | None, configs: list[Config], embedders: dict[str, Embedder]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Speed and AUDC of every configuration on one dataset: (speeds, audc) frames with a ``dataset`` column."""
    name = dataset_name(data_dir)
    base = load_data(replace_namespace(args, data=data_dir), embedders[BASELINE.name])
    texts = base.prompts["text"].to_list()
    sample = list(np.random.default_rng(0).choice(texts, size=min(args.speed_prompts, len(texts)), replace=False))
    speed, sample_vectors = measure_speed(embedders, sample, args.rounds)
    reference = sample_vectors[BASELINE.name]
    speed_rows, audc_frames = [], []
    for config in configs:
        embedder, t = embedders[config.name], time.perf_counter()
        vectors = sample_vectors[config.name]
        cosine = (vectors * reference).sum(axis=1) if vectors.shape == reference.shape else None  # same space only
        speed_rows.append(
            {
                "dataset": name,
                "config": config.name,
                "dim": vectors.shape[1],
                "prompts_s": speed[config.name],
                "speedup": speed[config.name] / speed[BASELINE.name],
                "cosine_mean": None if cosine is None else float(cosine.mean()),
                "cosine_min": None if cosine is None else float(cosine.min()),
            }
        )
        data = replace(base, embeddings=EmbeddingCache(args.cache_dir).embed(embedder, texts))
        audc_frames.append(audc_table(data, args).with_columns(dataset=pl.lit(name), config=pl.lit(config.name)))
        print(f"{name}, {config.name}: embedded and routed in {time.perf_counter() - t:.0f} s", flush=True)
    audc = pl.concat(audc_frames)
    audc = audc.join(
        audc.filter(pl.col("config") == BASELINE.name).select("method", "cost_mode", base_audc="audc"),
        on=["method", "cost_mode"],
    ).with_columns(d_audc=pl.col("audc") - pl.col("base_audc"))
    print(f"{name}: {len(texts)} prompts; speed on {len(sample)} of them, median of {args.rounds} interleaved rounds")
    return pl.DataFrame(speed_rows), audc


def replace_namespace(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve"
    )
    add_protocol_arguments(parser, seeds=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--data",
        nargs="+",
        default=[None],
        help="datasets to measure, each an MMLU-Pro directory or one in the generic layout (docs/data.md); "
        "default ../shared/data/mmlu_pro",
    )
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", DEFAULT_EMBEDDER))
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=BACKENDS,
        default=list(BACKENDS),
        help="measure these backends' configurations (the torch baseline and the default always run)",
    )
    parser.add_argument("--speed-prompts", type=int, default=256, help="prompts in the timed sample")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per configuration")
    parser.add_argument("--out", type=Path, default=DATA_HOME / "results" / "embedders")
    args = parser.parse_args(argv)
    args.ablations = False

    default = Config(DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH)  # Embedder()'s
    chosen = [c for c in CONFIGS if c.backend in args.backend]
    configs = list(dict.fromkeys([BASELINE, *chosen, default]))
    embedders = {c.name: c.embedder(args.embedder) for c in configs}
    start = time.perf_counter()
    speed_frames, audc_frames = [], []
    for data_dir in args.data:
        try:
            speeds, audc = measure_dataset(args, data_dir, configs, embedders)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        speed_frames.append(speeds)
        audc_frames.append(audc)
    speeds, audc = pl.concat(speed_frames), pl.concat(audc_frames)
    print(f"\nmachine: {machine_description()}")
    ok = report(speeds, audc, default.name, len(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    speeds.write_csv(args.out / "speed.csv")
    audc.write_csv(args.out / "audc.csv")
    print(f"\nresults: {args.out}/speed.csv, audc.csv; total {time.perf_counter() - start:.0f} s")
    return 0 if ok or not args.strict else 1


def worst_losses(audc: pl.DataFrame) -> pl.DataFrame:
    """Per (dataset, config): the worst UniRoute AUDC loss against the baseline (any method and cost mode)."""
    return (
        audc.filter(pl.col("method").str.starts_with("UniRoute"))
        .group_by("dataset", "config", maintain_order=True)
        .agg(loss=-pl.col("d_audc").min())
    )


def pick_default(speeds: pl.DataFrame, audc: pl.DataFrame) -> str | None:
    """Issue 15's rule: the fastest configuration (mean speed-up over datasets) whose worst UniRoute AUDC loss is
    <= FLOOR_AUDC_LOSS on every dataset measured."""
    losses = worst_losses(audc).group_by("config").agg(pl.col("loss").max())
    ranked = (
        speeds.group_by("config")
        .agg(pl.col("speedup").mean())
        .join(losses, on="config")
        .filter(pl.col("loss") <= FLOOR_AUDC_LOSS)
        .sort("speedup", descending=True)
    )
    return ranked["config"][0] if ranked.height else None


def report(speeds: pl.DataFrame, audc: pl.DataFrame, default: str, n_seeds: int) -> bool:
    """Print the speed and AUDC tables per dataset (``*`` marks the default), the rule's pick and the floors; True
    when every floor holds."""
    losses = worst_losses(audc)
    columns = [(m, mode) for mode in ("flat", "tokens") for m in QUALITY_METHODS]
    for dataset in speeds["dataset"].unique(maintain_order=True):
        rows = speeds.filter(pl.col("dataset") == dataset)
        print(f"\n=== {dataset} ===")
        print(
            f"{'configuration':<22}{'dim':>5}{'prompts/s':>11}{'x baseline':>11}{'cosine to baseline mean (min)':>31}"
        )
        for r in rows.iter_rows(named=True):
            mark = "*" if r["config"] == default else " "
            cosine = "-" if r["cosine_mean"] is None else f"{r['cosine_mean']:.4f} ({r['cosine_min']:.3f})"
            print(f"{mark}{r['config']:<21}{r['dim']:>5}{r['prompts_s']:>11.1f}{r['speedup']:>10.2f}x{cosine:>31}")
        print(f"\nAUDC, mean of {n_seeds} seeds (change vs {BASELINE.name} in brackets); worst UniRoute loss")
        print(
            f"{'configuration':<22}"
            + "".join(f"{m.replace('UniRoute-', '') + ' / ' + mode:>20}" for m, mode in columns)
            + f"{'worst loss':>12}"
        )
        cells_of = audc.filter(pl.col("dataset") == dataset)
        for name in rows["config"]:
            cells = cells_of.filter(pl.col("config") == name)
            line = f"{'*' if name == default else ' '}{name:<21}"
            for method, mode in columns:
                r = cells.filter((pl.col("method") == method) & (pl.col("cost_mode") == mode)).row(0, named=True)
                line += f"{r['audc']:>11.4f} ({r['d_audc']:+.4f})"
            loss = losses.filter((pl.col("dataset") == dataset) & (pl.col("config") == name))["loss"].item()
            print(line + f"{loss:>+12.4f}")
    pick = pick_default(speeds, audc)
    print(
        f"\ndefault rule (fastest with a worst UniRoute AUDC loss <= {FLOOR_AUDC_LOSS} on every dataset): "
        f"{pick or 'none'} (current default: {default})"
    )
    checks = []
    for dataset in speeds["dataset"].unique(maintain_order=True):
        rows = speeds.filter(pl.col("dataset") == dataset)
        speed = dict(rows.select("config", "prompts_s").iter_rows())
        speedup = dict(rows.select("config", "speedup").iter_rows())
        loss = dict(losses.filter(pl.col("dataset") == dataset).select("config", "loss").iter_rows())
        for name in [c for c in speed if c.startswith("static ")]:
            ratio = speed[name] / speed[default]
            checks.append(
                (
                    f"{dataset}: {name} embeds >= {FLOOR_STATIC_VS_DEFAULT:.0f}x the default's prompts/s: {ratio:.1f}x",
                    ratio >= FLOOR_STATIC_VS_DEFAULT,
                )
            )
        checks += [
            (
                f"{dataset}: default ({default}) embeds >= {FLOOR_SPEEDUP:.0f}x the baseline's prompts/s: "
                f"{speedup[default]:.2f}x",
                speedup[default] >= FLOOR_SPEEDUP,
            ),
            (
                f"{dataset}: default's worst UniRoute AUDC loss <= {FLOOR_AUDC_LOSS}: {loss[default]:+.4f}",
                loss[default] <= FLOOR_AUDC_LOSS,
            ),
        ]
    print("\nfloors:")
    for text, held in checks:
        print(f"  [{'PASS' if held else 'FAIL'}] {text}")
    return all(held for _, held in checks)


if __name__ == "__main__":
    raise SystemExit(main())
