"""How long `make demo`'s pipeline takes from nothing and when run again (issue 5's floors: 10 and 3 minutes).

    python -m benchmarks.demo_timing [--strict] [DEMO ARGS...]

Runs ``python -m pipelines.demo`` twice in a fresh data home (``data/bench/demo_timing``): the first run embeds
every prompt and asks every LLM; the second reuses the warehouse (embeddings and answers), as `make demo` does.
Set-up of ``.venv`` is not included (it is pip's time, measured once per machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_description

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FLOORS_S = {"from nothing": 600.0, "run again": 180.0}


def _run_demo(home: Path, demo_args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "UNIROUTE_DATA_HOME": str(home)}
    for name in ("DAGSTER_HOME", "UNIROUTE_WAREHOUSE", "UNIROUTE_CATALOG"):
        env.pop(name, None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", *demo_args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"demo failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a floor is missed")
    args, demo_args = parser.parse_known_args(argv)
    home = PROJECT_ROOT / "data" / "bench" / "demo_timing"
    shutil.rmtree(home, ignore_errors=True)
    print(f"machine: {machine_description()}")
    timings = {}
    for label in FLOORS_S:
        timings[label], out = _run_demo(home, demo_args)
        print(f"  {label}: {timings[label]:.0f} s", flush=True)
    print("\nthe second run's table:\n" + out[out.index("version") :].split("\n\n")[0])
    print("\n| run | seconds | floor | ratio to floor | result |\n|---|---|---|---|---|")
    failed = False
    for label, seconds in timings.items():
        ok = seconds <= FLOORS_S[label]
        failed |= not ok
        verdict = "PASS" if ok else "FAIL"
        print(f"| {label} | {seconds:.0f} | {FLOORS_S[label]:.0f} | {seconds / FLOORS_S[label]:.2f} | {verdict} |")
    print(f"re-run / first run: {timings['run again'] / timings['from nothing']:.2f}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
