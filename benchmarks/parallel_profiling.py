"""Profiling many LLMs at once (issue 15): real Dagster runs, launched by the onboarding sensor of a real
``dagster-daemon``, on one instance with ``max_concurrent_runs`` >= the number of LLMs.

    python -m benchmarks.parallel_profiling [--llms 8] [--prompts 1200] [--latency-ms 300] [--strict]
        [--code-server-workers N]   # the code server run apart, with N launch threads

The replay endpoint (its own process) serves ``--data`` (default ../shared/data/mmlu_pro) with ``--latency-ms`` per
answer; each catalog entry allows ``--concurrency`` requests in flight. Three scenarios, each on a fresh instance
and a fresh copy of one warehouse holding the prompts (all of them validation prompts):

1. single: a catalog of one LLM; the daemon's sensor launches its ``profile_llm`` run. Repeated for ``--singles``
   LLMs; the slowest is the baseline.
2. parallel: a catalog of ``--llms`` LLMs; the sensor launches one run per LLM and the run queue starts them
   together. Floor: wall time (first run queued to last run finished) <= 1.5x the slowest single.
3. kill: as 2, but one run is SIGKILLed at a random point of its collection, then launched again
   (``dagster job launch``). Floors, from the endpoint's request log against the warehouse: 0 answers stored twice,
   0 staged answers asked again, 0 pairs left without an answer. Answers in flight at the kill or received in the
   run's last ``flush_interval_s`` (never staged) are asked again: reported, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl
import yaml

import warehouse as wh
from benchmarks.collection import free_port, replay_server, served_ok_counts
from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import add_data_argument, data_missing, distinct_question_ids
from profiling.importers import import_mmlu_pro
from profiling.staging import staged_pairs
from serving.processes import venv_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FLOOR = 1.5
JOB = "profile_llm"


def _models(data: Path, n: int, prompts: list[int]) -> pl.DataFrame:
    """``n`` LLMs that answered every chosen prompt (the replay endpoint can serve them all)."""
    responses = pl.read_parquet(data / "responses.parquet", columns=["model", "question_id"])
    complete = (
        responses.filter(pl.col("question_id").is_in(prompts))
        .group_by("model")
        .agg(pl.col("question_id").n_unique().alias("n"))
        .filter(pl.col("n") == len(prompts))["model"]
    )
    models = pl.read_csv(data / "models.csv").filter(pl.col("model").is_in(complete.to_list())).sort("model")
    if models.height < n:
        raise SystemExit(f"error: only {models.height} LLMs answered all {len(prompts)} prompts; ask for fewer")
    return models.head(n).select("model", "usd_per_mtok")


def _warehouse(path: Path, data: Path, prompts: list[int]) -> None:
    with wh.connect(path) as con:
        import_mmlu_pro(con, data, question_ids=prompts, shares={"validation": 1.0})


def _catalog(path: Path, models: pl.DataFrame, base_url: str, concurrency: int) -> None:
    entries = [
        {"name": r["model"], "usd_per_mtok_in": r["usd_per_mtok"], "usd_per_mtok_out": r["usd_per_mtok"]}
        for r in models.iter_rows(named=True)
    ]
    defaults = {"base_url": base_url, "max_concurrency": concurrency}
    path.write_text(yaml.safe_dump({"defaults": defaults, "llms": entries}, sort_keys=False))


class Scenario:
    """A fresh Dagster instance, warehouse copy and catalog under ``root``, and a ``dagster-daemon`` on them."""

    def __init__(self, root: Path, pristine: Path, models: pl.DataFrame, base_url: str, args) -> None:
        self.root, self.models = root, models
        home = root / "dagster"
        home.mkdir(parents=True)
        settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
        settings["concurrency"]["runs"]["max_concurrent_runs"] = max(args.llms, 1)
        (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
        self.warehouse, self.catalog = root / "warehouse.duckdb", root / "llms.yaml"
        shutil.copy(pristine, self.warehouse)
        _catalog(self.catalog, models, base_url, args.concurrency)
        self.env = venv_env() | {
            "DAGSTER_HOME": str(home),
            "UNIROUTE_DATA_HOME": str(root),
            "UNIROUTE_WAREHOUSE": str(self.warehouse),
            "UNIROUTE_CATALOG": str(self.catalog),
            "UNIROUTE_STAGING": str(root / "staging"),
            "UNIROUTE_PACING": str(root / "pacing.sqlite"),
        }
        self.daemon: subprocess.Popen | None = None
        self.code_server: subprocess.Popen | None = None
        self.workers = args.code_server_workers
        self.cpu_s: dict[str, float] = {}  # run id -> CPU seconds of its process, last seen
        self._pids: dict[str, int] = {}

    def _sample_cpu(self, instance, records: list) -> None:
        """Each running run's process CPU so far (user + system, from /proc), kept per run."""
        for record in records:
            run_id = record.dagster_run.run_id
            if record.dagster_run.is_finished or record.start_time is None:
                continue
            pid = self._pids.get(run_id) or _worker_pid(instance, run_id)
            if pid is None:
                continue
            self._pids[run_id] = pid
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            self.cpu_s[run_id] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Scenario:
        with self.instance() as instance:  # its storage created here, not by the daemon's processes at once
            instance.get_run_records(limit=1)
        self._log = open(self.root / "daemon.log", "w")  # closed with the daemon, in __exit__
        workspace = self._start_code_server() if self.workers else []
        self.daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", *workspace],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def _start_code_server(self) -> list[str]:
        """A code server of our own with ``--code-server-workers`` threads (the daemon's own has min(32, cores + 4),
        and each run launch holds one until the run's process has loaded the code); the daemon's workspace args."""
        port = free_port()
        self.code_server = subprocess.Popen(
            [
                *(str(Path(sys.executable).with_name("dagster")), "api", "grpc", "-m", "pipelines.definitions"),
                *("-h", "127.0.0.1", "-p", str(port), "-n", str(self.workers)),
            ],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        workspace = self.root / "workspace.yaml"
        server = {"host": "127.0.0.1", "port": port, "location_name": "pipelines.definitions"}
        workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": server}]}))
        return ["-w", str(workspace)]

    def __exit__(self, *exc) -> None:
        for process in (self.daemon, self.code_server):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
        if self.daemon is not None:
            self._log.close()

    def instance(self):
        import dagster as dg

        os.environ["DAGSTER_HOME"] = self.env["DAGSTER_HOME"]
        return dg.DagsterInstance.get()

    def runs(self, instance) -> list:
        import dagster as dg

        return list(instance.get_run_records(dg.RunsFilter(job_name=JOB)))

    def wait(self, instance, n: int, timeout_s: float, done: set[str] | None = None) -> list:
        """Until ``n`` runs finished (a run in ``done`` counts as finished whatever its status)."""
        deadline = time.monotonic() + timeout_s
        done = done or set()
        while time.monotonic() < deadline:
            records = self.runs(instance)
            finished = [r for r in records if r.dagster_run.is_finished or r.dagster_run.run_id in done]
            if len(finished) >= n:
                return records
            self._sample_cpu(instance, records)
            if self.daemon is not None and self.daemon.poll() is not None:
                raise SystemExit(f"error: dagster-daemon exited; see {self.root / 'daemon.log'}")
            time.sleep(0.2)
        raise SystemExit(f"error: {n} runs not finished in {timeout_s:.0f} s; see {self.root / 'daemon.log'}")

    def launch(self, model: str) -> None:
        """One more run of ``model``'s partition, as a user would: ``dagster job launch`` (queued; the daemon starts
        it)."""
        config = {"ops": {"llm_catalog": {"config": {"path": str(self.catalog)}}}}
        subprocess.run(
            [
                str(Path(sys.executable).with_name("dagster")),
                *("job", "launch", "-j", JOB),
                *("--tags", json.dumps({"dagster/partition": model}), "--config-json", json.dumps(config)),
            ],
            cwd=PROJECT_ROOT,
            env=self.env,
            check=True,
            capture_output=True,
        )


def _steps(instance, records: list) -> dict[str, float]:
    """Median seconds per step over ``records``' runs, and of the launch (queued to the run's start)."""
    times: dict[str, list[float]] = {"launch": [r.start_time - r.create_timestamp.timestamp() for r in records]}
    for record in records:
        for step in instance.get_run_step_stats(record.dagster_run.run_id):
            if step.end_time and step.start_time:
                times.setdefault(step.step_key.split(".")[-1], []).append(step.end_time - step.start_time)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def _wall(records: list) -> float:
    """First run queued to last run finished, in seconds."""
    start = min(r.create_timestamp.timestamp() for r in records)
    return max(r.end_time for r in records if r.end_time) - start


def _failed(records: list) -> list[str]:
    import dagster as dg

    return [_partition(r) for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]


def _partition(record) -> str:
    return record.dagster_run.tags.get("dagster/partition", "?")


def _ok_count(root: str, model: str) -> int:
    served = served_ok_counts(root).filter(pl.col("model") == model)
    return int(served["count"].sum() or 0)


def _worker_pid(instance, run_id: str) -> int | None:
    """The process executing run ``run_id``, as its event log says ("Executing steps in process (pid: N)")."""
    for entry in instance.all_logs(run_id):
        if found := re.search(r"Executing steps in process \(pid: (\d+)\)", entry.user_message or ""):
            return int(found.group(1))
    return None


def profile(root: Path, pristine: Path, models: pl.DataFrame, base_url: str, args) -> dict:
    """Every LLM of ``models`` in the catalog of a fresh instance: the sensor launches one run each."""
    with Scenario(root, pristine, models, base_url, args) as scenario, scenario.instance() as instance:
        records = scenario.wait(instance, models.height, args.timeout)
        steps = _steps(instance, records)
        cpu = sorted(scenario.cpu_s.values())
        steps["CPU per run (>=)"] = cpu[len(cpu) // 2] if cpu else float("nan")
    if _failed(records):
        raise SystemExit(f"error: the runs of {_failed(records)} failed; see {root}")
    with wh.connect_read_only(root / "warehouse.duckdb") as con:
        stored = wh.read_responses(con).select("model", "prompt_id")
    overlap = max(r.start_time for r in records) < min(r.end_time for r in records)
    return {"wall": _wall(records), "stored": stored.height, "overlap": overlap, "steps": steps}


def kill(root: Path, pristine: Path, models: pl.DataFrame, server: str, args) -> dict:
    """Every LLM's run at once; SIGKILL one when the endpoint has answered it ``kill_at`` times; launch it again."""
    rng = random.Random(args.seed)
    victim = models["model"][rng.randrange(models.height)]
    kill_at = rng.randint(args.prompts // 5, args.prompts * 4 // 5)
    with Scenario(root, pristine, models, f"{server}/v1", args) as scenario, scenario.instance() as instance:
        httpx.post(f"{server}/_replay/reset", timeout=10)
        deadline = time.monotonic() + args.timeout
        while _ok_count(server, victim) < kill_at:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: {victim} never reached {kill_at} answers; see {root}")
            time.sleep(0.05)
        [record] = [r for r in scenario.runs(instance) if _partition(r) == victim]
        pid = _worker_pid(instance, record.dagster_run.run_id)
        if pid is None:
            raise SystemExit(f"error: no process executes run {record.dagster_run.run_id}")
        os.kill(pid, signal.SIGKILL)
        staged = staged_pairs(scenario.env["UNIROUTE_STAGING"], [victim]).select("model", "prompt_id").unique()
        killed = {record.dagster_run.run_id}
        scenario.wait(instance, models.height, args.timeout, done=killed)
        scenario.launch(victim)
        records = scenario.wait(instance, models.height + 1, args.timeout, done=killed)
    rerun = [
        r
        for r in records
        if r.dagster_run.tags.get("dagster/partition") == victim and r.dagster_run.run_id not in killed
    ]
    served = served_ok_counts(server)
    with wh.connect_read_only(root / "warehouse.duckdb") as con:
        stored = wh.read_responses(con).select("model", "prompt_id")
    victim_served = served.filter(pl.col("model") == victim)
    twice = victim_served.filter(pl.col("count") > 1)
    return {
        "victim": victim,
        "killed_at": kill_at,
        "staged_at_kill": staged.height,
        "rerun_ok": bool(rerun) and not _failed(rerun),
        "duplicated": stored.height - stored.unique().height,
        "staged_asked_again": twice.join(staged, on=["model", "prompt_id"]).height,
        "paid_twice": twice.height,
        "lost": models.height * args.prompts - stored.unique().height,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--llms", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=1200)
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--singles", type=int, default=2, help="LLMs profiled alone; the slowest is the baseline")
    parser.add_argument("--seed", type=int, default=0, help="of the killed LLM and the kill point")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per scenario")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument(
        "--code-server-workers", type=int, default=0, help="run the code server apart with this many threads"
    )
    parser.add_argument("--keep", type=Path, default=None, help="a directory for the instances (kept afterwards)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a floor fails")
    args = parser.parse_args(argv)
    if data_missing(args.data):
        return 2
    print(f"machine: {machine_description()}")
    prompts = distinct_question_ids(args.data, args.prompts)
    models = _models(args.data, args.llms, prompts)
    with tempfile.TemporaryDirectory(prefix="uniroute-parallel-") as tmp:
        tmp = args.keep or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        pristine = tmp / "pristine.duckdb"
        _warehouse(pristine, args.data, prompts)
        with replay_server(args.data, "--latency-ms", str(args.latency_ms)) as server:
            base_url = f"{server}/v1"
            singles = {}
            for i in range(args.singles):
                one = models.slice(i, 1)
                singles[one["model"][0]] = profile(tmp / f"single-{i}", pristine, one, base_url, args)
                print(f"single {one['model'][0]}: {singles[one['model'][0]]}", flush=True)
            together = profile(tmp / "parallel", pristine, models, base_url, args)
            print(f"{models.height} at once: {together}", flush=True)
            killed = None if args.skip_kill else kill(tmp / "kill", pristine, models, server, args)
    slowest_model = max(singles, key=lambda m: singles[m]["wall"])
    slowest = singles[slowest_model]["wall"]
    ratio = together["wall"] / slowest
    ideal = args.prompts / args.concurrency * args.latency_ms / 1000
    rows = [
        (
            f"single run, slowest of {len(singles)}",
            f"{slowest:.1f} s (collection alone >= {ideal:.1f} s)",
            "",
            "",
        ),
        (
            f"{models.height} runs at once (all started before any ended: {together['overlap']})",
            f"{together['wall']:.1f} s = {ratio:.2f}x the slowest single; {together['stored']} answers stored",
            f"<= {FLOOR}x",
            "PASS" if ratio <= FLOOR else "FAIL",
        ),
    ]
    passed = ratio <= FLOOR
    if killed is not None:
        ok = killed["rerun_ok"] and killed["duplicated"] == killed["staged_asked_again"] == killed["lost"] == 0
        passed = passed and ok
        rows.append(
            (
                f"SIGKILL of {killed['victim']}'s run after {killed['killed_at']} answers, then a re-run",
                f"{killed['duplicated']} duplicated, {killed['staged_asked_again']} staged answers asked again "
                f"(of {killed['staged_at_kill']} staged), {killed['lost']} lost; {killed['paid_twice']} answers "
                "in flight or received in the last flush interval, asked again",
                "0 / 0 / 0",
                "PASS" if ok else "FAIL",
            )
        )
    print(
        f"\n{models.height} LLMs x {args.prompts} prompts, {args.latency_ms:.0f} ms latency, {args.concurrency} in "
        "flight per LLM; real Dagster runs launched by the onboarding sensor of a dagster-daemon\n"
    )
    print("| scenario | measured | floor | verdict |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    names = list(together["steps"])
    print("\nmedian seconds per step (launch: queued to the run's start; CPU per run: its process's user + system")
    print("seconds from /proc, last sampled up to 0.2 s before it ended)\n")
    print("| runs | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, result in (
        (f"single ({slowest_model})", singles[slowest_model]),
        (f"{models.height} at once", together),
    ):
        print(f"| {label} | " + " | ".join(f"{result['steps'].get(n, float('nan')):.1f}" for n in names) + " |")
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
