"""Collection benchmark: throughput, faults and a crash, against the replay endpoint in its own process.

    python -m benchmarks.collection                 # all three scenarios on ../shared/data/mmlu_pro

1. Throughput: 50 ms endpoint latency, concurrency 64; floor >= 80% of the ideal 64 / 0.05 s = 1,280
   requests/s, DuckDB writes included.
2. Faults: 10% injected faults of every kind (429, 500, 503, hang past the timeout, truncated body) on a
   2,000-prompt collection: every pair stored exactly once, counted in the warehouse and the server's log.
3. Crash: SIGKILL the collector mid-run, re-run: no duplicates, and no pair stored before the kill was asked
   again (pairs in flight at the kill may be asked twice: they were never stored).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import polars as pl

import warehouse as wh
from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import add_data_argument, data_missing, distinct_question_ids
from profiling.collector import RetryPolicy
from profiling.importers import import_mmlu_pro
from profiling.staging import collect
from serving.processes import free_port, server_process

MODEL = "Meta-Llama-3_1-70B-Instruct"


@contextmanager
def replay_server(data: Path, *extra: str):
    """The replay endpoint as a separate process (its own interpreter and cores), stopped on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipelines.cli", "replay-server", "--data", str(data), "--port", str(port), *extra]
    root = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as logs, server_process(cmd, f"{root}/v1/models", Path(logs) / "replay.log"):
        yield root


def _warehouse(directory: Path, data: Path, n_prompts: int, base_url: str, concurrency: int) -> Path:
    path = directory / "bench.duckdb"
    with wh.connect(path) as con:
        import_mmlu_pro(con, data, question_ids=distinct_question_ids(data, n_prompts), shares={"validation": 1.0})
        wh.upsert_llms(
            con,
            pl.DataFrame(
                {
                    "name": MODEL,
                    "base_url": base_url,
                    "model_id": MODEL,
                    "usd_per_mtok_in": 0.88,
                    "usd_per_mtok_out": 0.88,
                    "max_concurrency": concurrency,
                    "active": True,
                }
            ),
        )
    return path


def served_ok_counts(root: str) -> pl.DataFrame:
    """Answers the replay endpoint at ``root`` served, per model and prompt_id (the warehouse's ids): ``count``."""
    rows = httpx.get(f"{root}/_replay/requests", timeout=30).json()
    frame = pl.DataFrame(
        rows, schema={"model": pl.String, "prompt_id": pl.String, "outcome": pl.String, "count": pl.Int64}
    )
    return frame.filter(pl.col("outcome") == "ok").select("model", "prompt_id", "count")  # the warehouse's ids


def _duplicates(path: Path) -> tuple[int, int]:
    with wh.connect(path) as con:
        stored = wh.read_responses(con)
    return stored.height, stored.height - stored.select("model", "prompt_id").unique().height


def throughput(data: Path, tmp: Path, n: int, latency_ms: float, concurrency: int) -> dict:
    with replay_server(data, "--latency-ms", str(latency_ms)) as root:
        path = _warehouse(tmp / "throughput", data, n, f"{root}/v1", concurrency)
        with wh.connect(path) as con:
            report = collect(con, policy=RetryPolicy(timeout_s=10), progress=False)
    ideal = concurrency / (latency_ms / 1000)
    rate = report.stored / report.seconds
    return {
        "requests": report.stored,
        "seconds": report.seconds,
        "req_per_s": rate,
        "ideal": ideal,
        "fraction": rate / ideal,
        "pass": rate >= 0.8 * ideal,
    }


def faults(data: Path, tmp: Path, n: int, rate: float) -> dict:
    args = ("--latency-ms", "5", "--fault-rate", str(rate), "--hang-seconds", "10", "--seed", "7")
    with replay_server(data, *args) as root:
        path = _warehouse(tmp / "faults", data, n, f"{root}/v1", 64)
        with wh.connect(path) as con:
            report = collect(
                con,
                policy=RetryPolicy(max_attempts=12, base_delay_s=0.05, max_delay_s=1.0, timeout_s=2.0),
                progress=False,
            )
        served = served_ok_counts(root)
        totals = httpx.get(f"{root}/_replay/stats", timeout=10).json()
    rows, dup = _duplicates(path)
    missing = n - rows
    ok_twice = served.filter(pl.col("count") > 1).height
    return {
        "prompts": n,
        "stored": rows,
        "missing": missing,
        "duplicated": dup,
        "served_ok_twice": ok_twice,
        "faults_served": {k: v for k, v in totals.items() if k != "ok"},
        "errors_seen": dict(report.errors),
        "pass": missing == 0 and dup == 0 and ok_twice == 0,
    }


def crash(data: Path, tmp: Path, n: int, kill_at: int) -> dict:
    """SIGKILL the collector (its own process) once the server has answered ``kill_at`` requests."""
    with replay_server(data, "--latency-ms", "50") as root:
        path = _warehouse(tmp / "crash", data, n, f"{root}/v1", 16)
        cmd = [sys.executable, "-m", "pipelines.cli", "collect", "--warehouse", str(path), "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while httpx.get(f"{root}/_replay/stats", timeout=10).json().get("ok", 0) < kill_at and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with wh.connect(path) as con:
            before = wh.read_responses(con).select("model", "prompt_id")
            collect(con, progress=False)
        served = served_ok_counts(root)
    rows, dup = _duplicates(path)
    reasked = before.join(served, on=["model", "prompt_id"]).filter(pl.col("count") > 1).height
    return {
        "stored_before_kill": before.height,
        "stored_after_rerun": rows,
        "duplicated": dup,
        "stored_pairs_asked_again": reasked,
        "pass": 0 < before.height < n and rows == n and dup == 0 and reasked == 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--throughput-requests", type=int, default=6000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fault-prompts", type=int, default=2000)
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--crash-prompts", type=int, default=1500)
    parser.add_argument("--kill-at", type=int, default=700, help="answers served before the SIGKILL")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a floor fails")
    args = parser.parse_args(argv)
    if data_missing(args.data):
        return 2
    print(f"machine: {machine_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for sub in ("throughput", "faults", "crash"):
            (tmp / sub).mkdir()
        results = {
            "throughput": throughput(
                data=args.data,
                tmp=tmp,
                n=args.throughput_requests,
                latency_ms=args.latency_ms,
                concurrency=args.concurrency,
            ),
            "faults": faults(args.data, tmp, args.fault_prompts, args.fault_rate),
            "crash": crash(args.data, tmp, args.crash_prompts, args.kill_at),
        }
    t = results["throughput"]
    print("\n| scenario | measured | floor | verdict |\n|---|---|---|---|")
    print(
        f"| throughput | {t['req_per_s']:.0f} req/s ({t['requests']} in {t['seconds']:.1f} s) = "
        f"{t['fraction']:.0%} of ideal {t['ideal']:.0f} | >= 80% | {'PASS' if t['pass'] else 'FAIL'} |"
    )
    f = results["faults"]
    print(
        f"| faults {args.fault_rate:.0%} | {f['stored']}/{f['prompts']} stored, {f['missing']} missing, "
        f"{f['duplicated']} duplicated, {f['served_ok_twice']} answered twice | 0 / 0 / 0 | "
        f"{'PASS' if f['pass'] else 'FAIL'} |"
    )
    c = results["crash"]
    print(
        f"| crash (SIGKILL) | {c['stored_before_kill']} stored before kill, {c['stored_after_rerun']} after "
        f"re-run, {c['duplicated']} duplicated, {c['stored_pairs_asked_again']} stored pairs re-asked | 0 / 0 | "
        f"{'PASS' if c['pass'] else 'FAIL'} |"
    )
    print(f"\nfaults served: {f['faults_served']}; collector saw: {f['errors_seen']}")
    ok = all(r["pass"] for r in results.values())
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
