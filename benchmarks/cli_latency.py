"""Wall time of ``uniroute models`` and ``uniroute route`` as a user runs them: each a fresh process (Python's
start-up and imports included) on a router registered in a scratch sqlite registry (K-means, K=16, over
MMLU-Pro's unseen LLMs, as ``benchmarks.routing_overhead`` registers it). For comparison, the same route through
MLflow's pyfunc loader (what both commands did before they read the version's files). Floor: 2 s each.

    python -m benchmarks.cli_latency [--runs 5] [--strict]

``python -X importtime -m serving.cli route ...`` shows where a command's imports go.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DATA_HOME
from benchmarks.routing_overhead import register
from benchmarks.routing_quality import cached_embedder, load_data, split_prompts_and_llms
from router_core import DEFAULT_BACKEND, DEFAULT_EMBEDDER
from serving.processes import venv_env

FLOOR_S = 2.0
PROMPT = "What is the derivative of x^2 + 3x?"
#: The route through MLflow's loader, in a fresh process: argv[1] the model URI, argv[2] the tracking URI.
VIA_MLFLOW = f"""
import sys
from serving.cli import _load_with_mlflow
_load_with_mlflow(sys.argv[1], sys.argv[2]).route([{PROMPT!r}], {{}})
"""


def wall_times(command: list[str], runs: int) -> list[float]:
    """Seconds each of ``runs`` fresh processes of ``command`` took (each must succeed)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=venv_env(), timeout=300)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="MMLU-Pro directory (default ../shared/data/mmlu_pro)")
    parser.add_argument("--sample", type=int, default=3000, help="prompts to fit the router on (cached embeddings)")
    parser.add_argument("--cache-dir", type=Path, default=DATA_HOME / "embeddings")
    parser.add_argument("--runs", type=int, default=5, help="processes per command; the median and the slowest")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a command's median is over the floor")
    args = parser.parse_args(argv)
    args.full = False
    embedder = cached_embedder(DEFAULT_EMBEDDER, backend=DEFAULT_BACKEND)  # the pipeline's
    try:
        data = load_data(args, embedder)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = DATA_HOME / "bench" / "cli_latency"
    shutil.rmtree(root, ignore_errors=True)
    model_uri = register(data, split_prompts_and_llms(data, 0), root, embedder)
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    registry = ["--model-uri", model_uri, "--tracking-uri", tracking]
    cli = [sys.executable, "-m", "serving.cli"]
    commands = {
        "uniroute models": ([*cli, "models", *registry], FLOOR_S),
        "uniroute route PROMPT": ([*cli, "route", PROMPT, *registry], FLOOR_S),
        "route via mlflow.pyfunc.load_model (before)": ([sys.executable, "-c", VIA_MLFLOW, model_uri, tracking], None),
    }
    print(f"machine: {machine_description()}; {len(os.sched_getaffinity(0))} cores usable\n")
    print("| command (fresh process) | median s | slowest s | floor s | result |")
    print("|---|---|---|---|---|")
    ok = True
    for name, (command, floor) in commands.items():
        times = wall_times(command, args.runs)
        median = statistics.median(times)
        held = floor is None or median <= floor
        ok &= held
        verdict = "-" if floor is None else ("PASS" if held else "FAIL")
        print(f"| {name} | {median:.2f} | {max(times):.2f} | {floor or '-'} | {verdict} |")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
