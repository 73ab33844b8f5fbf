"""Embedder backends side by side, in one run: speed on the same prompts and routing quality (AUDC) on MMLU-Pro.

Configurations: sentence-transformers on torch (fp32) at the model's own 256 tokens -- the baseline -- and at
128 tokens; an ONNX export with int8 weights (made locally from the bundled weights, run by ONNX Runtime) at 256,
192 and 128 tokens. Speed: prompts/s embedding the same sample, configurations interleaved round by round (median of
the rounds). Quality: the routing benchmark's protocol (``benchmarks.routing_quality``, no ablations) on each
configuration's vectors, AUDC per method and cost mode, and its change against the baseline.

Floor (issue 6): the default configuration (``Embedder()``'s) embeds >= 2x the prompts/s of the baseline with an
AUDC loss <= 0.002 for every UniRoute method and cost mode (mean over seeds).

    python -m benchmarks.embedders --full    # 5 seeds, each configuration embedded once (~35 min, 2 cores)
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
from benchmarks.routing_quality import ONNX_DIR, Data, add_protocol_arguments, load_data, run_seed, summarize
from router_core import DEFAULT_BACKEND, DEFAULT_EMBEDDER, DEFAULT_MAX_SEQ_LENGTH, Embedder, EmbeddingCache

QUALITY_METHODS = ["UniRoute-KMeans", "UniRoute-LearnedMap", "KNN"]
FLOOR_SPEEDUP, FLOOR_AUDC_LOSS = 2.0, 0.002


@dataclass(frozen=True)
class Config:
    backend: str
    max_seq_length: int | None  # None: the model's own limit

    @property
    def name(self) -> str:
        return f"{self.backend} @{self.max_seq_length or 'model'}"

    def embedder(self, model: str) -> Embedder:
        return Embedder(model, max_seq_length=self.max_seq_length, backend=self.backend, cache_dir=ONNX_DIR)


BASELINE = Config("torch", None)
CONFIGS = [BASELINE, Config("torch", 128), *(Config("onnx-int8", n) for n in (None, 192, 128))]


def measure_speed(
    embedders: dict[str, Embedder], texts: list[str], rounds: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Median prompts/s per embedder over ``rounds`` passes of ``texts``, the embedders taking turns; and each
    embedder's vectors of ``texts`` (from the last pass)."""
    for embedder in embedders.values():
        embedder.embed(texts[:8])  # load (and export) before timing
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, embedder in embedders.items():
            start = time.perf_counter()
            vectors[name] = embedder.embed(texts)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(texts) / float(np.median(s)) for name, s in seconds.items()}, vectors


def audc_table(data: Data, args: argparse.Namespace) -> pl.DataFrame:
    """Mean AUDC over seeds per (method, cost mode) of the routing benchmark's methods on ``data``'s vectors."""
    results = [r for seed in args.seeds for r in run_seed(data, seed, args)]
    frame = summarize(results).filter(pl.col("method").is_in(QUALITY_METHODS))
    return frame.group_by("method", "cost_mode").agg(pl.col("audc").mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--embedder", default=os.environ.get("UNIROUTE_EMBEDDER", DEFAULT_EMBEDDER))
    parser.add_argument("--speed-prompts", type=int, default=256, help="prompts in the timed sample")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per configuration")
    parser.add_argument("--out", type=Path, default=DATA_HOME / "results" / "embedders")
    args = parser.parse_args(argv)
    args.ablations = False

    default = Config(DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH)  # Embedder()'s
    configs = list(dict.fromkeys([*CONFIGS, default]))
    embedders = {c.name: c.embedder(args.embedder) for c in configs}
    start = time.perf_counter()
    try:
        base = load_data(args, embedders[BASELINE.name])
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    texts = base.prompts["text"].to_list()
    sample = list(np.random.default_rng(0).choice(texts, size=min(args.speed_prompts, len(texts)), replace=False))
    speed, sample_vectors = measure_speed(embedders, sample, args.rounds)
    reference = sample_vectors[BASELINE.name]
    speed_rows, audc_frames = [], []
    for config in configs:
        embedder, t = embedders[config.name], time.perf_counter()
        cosine = (sample_vectors[config.name] * reference).sum(axis=1)
        speed_rows.append(
            {
                "config": config.name,
                "prompts_s": speed[config.name],
                "speedup": speed[config.name] / speed[BASELINE.name],
                "cosine_mean": float(cosine.mean()),
                "cosine_min": float(cosine.min()),
            }
        )
        data = replace(base, embeddings=EmbeddingCache(args.cache_dir).embed(embedder, texts))
        audc_frames.append(audc_table(data, args).with_columns(config=pl.lit(config.name)))
        print(f"{config.name}: embedded and routed in {time.perf_counter() - t:.0f} s", flush=True)
    audc = pl.concat(audc_frames)
    audc = audc.join(
        audc.filter(pl.col("config") == BASELINE.name).select("method", "cost_mode", base_audc="audc"),
        on=["method", "cost_mode"],
    ).with_columns(d_audc=pl.col("audc") - pl.col("base_audc"))
    speeds = pl.DataFrame(speed_rows)
    print(f"\nmachine: {machine_description()}")
    print(f"data: {len(texts)} prompts; speed on {len(sample)} of them, median of {args.rounds} interleaved rounds")
    ok = report(speeds, audc, default.name, len(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    speeds.write_csv(args.out / "speed.csv")
    audc.write_csv(args.out / "audc.csv")
    print(f"\nresults: {args.out}/speed.csv, audc.csv; total {time.perf_counter() - start:.0f} s")
    return 0 if ok or not args.strict else 1


def report(speeds: pl.DataFrame, audc: pl.DataFrame, default: str, n_seeds: int) -> bool:
    """Print the speed and AUDC tables (``*`` marks the default) and the floor; True when it holds."""
    print(f"\n{'configuration':<22}{'prompts/s':>10}{'x baseline':>11}{'cosine to baseline mean (min)':>31}")
    for r in speeds.iter_rows(named=True):
        mark = "*" if r["config"] == default else " "
        print(
            f"{mark}{r['config']:<21}{r['prompts_s']:>10.1f}{r['speedup']:>10.2f}x"
            f"{r['cosine_mean']:>22.4f} ({r['cosine_min']:.3f})"
        )
    columns = [(m, mode) for mode in ("flat", "tokens") for m in QUALITY_METHODS]
    print(f"\nAUDC, mean of {n_seeds} seeds (change vs {BASELINE.name} in brackets)")
    print(f"{'configuration':<22}" + "".join(f"{m.replace('UniRoute-', '') + ' / ' + mode:>20}" for m, mode in columns))
    for name in speeds["config"]:
        cells = audc.filter(pl.col("config") == name)
        line = f"{'*' if name == default else ' '}{name:<21}"
        for method, mode in columns:
            r = cells.filter((pl.col("method") == method) & (pl.col("cost_mode") == mode)).row(0, named=True)
            line += f"{r['audc']:>11.4f} ({r['d_audc']:+.4f})"
        print(line)
    losses = dict(
        audc.filter(pl.col("method").str.starts_with("UniRoute"))
        .group_by("config")
        .agg(-pl.col("d_audc").min())
        .iter_rows()
    )
    speedups = dict(speeds.select("config", "speedup").iter_rows())
    meeting = [c for c in speedups if speedups[c] >= FLOOR_SPEEDUP and losses[c] <= FLOOR_AUDC_LOSS]
    print(f"\nfastest configuration meeting both floors: {max(meeting, key=speedups.get) if meeting else 'none'}")
    speedup, loss = speedups[default], losses[default]
    checks = [
        (
            f"default ({default}) embeds >= {FLOOR_SPEEDUP:.0f}x the baseline's prompts/s: {speedup:.2f}x",
            speedup >= FLOOR_SPEEDUP,
        ),
        (f"default's worst UniRoute AUDC loss <= {FLOOR_AUDC_LOSS}: {loss:+.4f}", loss <= FLOOR_AUDC_LOSS),
    ]
    print("\nfloors:")
    for text, held in checks:
        print(f"  [{'PASS' if held else 'FAIL'}] {text}")
    return all(held for _, held in checks)


if __name__ == "__main__":
    raise SystemExit(main())
