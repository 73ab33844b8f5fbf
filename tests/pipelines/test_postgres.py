"""The pipeline past one machine's SQLite: Dagster's run, event-log and schedule storage and MLflow's backend store
on a throwaway PostgreSQL server on 127.0.0.1. The per-LLM profiling runs start at once, each in its own process
(as a run launcher starts them) and ask their endpoint at once (their warehouse steps take turns on DuckDB's
file lock); then the map,
the features and the router, registered in the Postgres-backed registry. Skips where PostgreSQL is not installed
(``make test`` installs Debian's ``postgresql``)."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import warehouse as wh
from assets.profiling import llm_catalog, llm_partitions, prompt_set
from assets.resources import ArtifactsResource
from pipelines.definitions import defs
from replay import ReplayConfig, ReplayServer
from serving.processes import free_port, venv_env

pytestmark = pytest.mark.e2e  # a whole pipeline or server, end to end

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LLMS = ["cheap", "math-pro"]
# Instance storage with its credentials from the environment, as in docs/scale-out.md: no secrets in the file.
STORAGE_YAML = """
storage:
  postgres:
    postgres_db:
      scheme: postgresql+psycopg2
      hostname: {env: DAGSTER_PG_HOST}
      port: {env: DAGSTER_PG_PORT}
      username: {env: DAGSTER_PG_USER}
      password: {env: DAGSTER_PG_PASSWORD}
      db_name: dagster
"""
# Every prompt split: the cluster map trains on the profiled LLMs' train answers.
PROFILE_RUN_CONFIG = {"ops": {"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}}}


def _postgres_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest ``/usr/lib/postgresql/N/bin``."""
    if found := shutil.which("initdb"):
        return Path(found).parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return debian[-1].parent if debian else None


@dataclass(frozen=True)
class Postgres:
    """A running server on 127.0.0.1 with the superuser ``uniroute`` and its password."""

    port: int
    password: str
    user: str = "uniroute"

    def url(self, db: str) -> str:
        """SQLAlchemy's URL (Dagster, MLflow): the driver named, as SQLAlchemy 2.1 would otherwise pick psycopg 3."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str, params: tuple = (), autocommit: bool = False) -> list[tuple]:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=db)
        con.autocommit = autocommit  # CREATE DATABASE refuses to run in a transaction
        try:
            with con.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            con.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """``initdb`` into a temporary directory and ``pg_ctl start`` on a free port (socket there too); stopped and
    removed at teardown. As root, the server runs as the ``postgres`` system user (initdb refuses root)."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `make test` installs Debian's postgresql")
    as_user: list[str] = []
    if os.getuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` system user to run initdb as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="uniroute-pg-"))  # not under pytest's root-only tmp: postgres must reach it
    if as_user:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log, secret = root / "data", root / "server.log", root / "password"
    server = Postgres(port=free_port(), password=secrets.token_urlsafe(16))
    secret.write_text(server.password)
    if as_user:
        os.chown(secret, owner.pw_uid, owner.pw_gid)

    def pg(*args: object) -> None:
        done = subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} exited {done.returncode}: {done.stderr.strip()}\n{tail}")

    options = f"-k {root} -p {server.port} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        pg(bindir / "initdb", "-D", data, "-U", server.user, f"--pwfile={secret}", "--auth=scram-sha-256", "--no-sync")
        pg(bindir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")
        try:
            for db in ("dagster", "mlflow"):
                server.query("postgres", f"CREATE DATABASE {db}", autocommit=True)
            yield server
        finally:
            pg(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_instance(postgres, tmp_path, monkeypatch) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance with the project's dagster.yaml (telemetry, pools) plus Postgres storage."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text() + STORAGE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for key, value in {"HOST": "127.0.0.1", "PORT": postgres.port, "USER": postgres.user}.items():
        monkeypatch.setenv(f"DAGSTER_PG_{key}", str(value))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres.password)
    with dg.DagsterInstance.get() as instance:
        yield instance


def _profile_in_parallel(models: list[str], config: Path, logs: Path) -> None:
    """``dagster job execute`` of ``profile_llm`` for each model, all started at once, each in its own process (as
    the default run launcher runs them); each must succeed. Any still running on an error are killed."""
    dagster = str(Path(sys.executable).with_name("dagster"))
    started: list[tuple[str, Path, subprocess.Popen]] = []
    try:
        for model in models:
            command = [dagster, "job", "execute", "-m", "pipelines.definitions", "-j", "profile_llm", "-c", str(config)]
            command += ["--tags", json.dumps({"dagster/partition": model})]
            log = logs / f"profile-{model}.log"
            with open(log, "w") as out:
                process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=venv_env(), stdout=out, stderr=out)
            started.append((model, log, process))
        for model, log, process in started:
            code = process.wait(timeout=180)
            assert code == 0, f"profile_llm[{model}] exited {code}:\n{log.read_text()[-3000:]}"
    finally:
        for _, _, process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def _step_windows(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float, str]]:
    """(start, end, run:step) of every step of ``run_ids``, from the event log."""
    windows = []
    for run_id in run_ids:
        events = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS})
        starts = {e.step_key: e.timestamp for e in events if e.dagster_event_type == dg.DagsterEventType.STEP_START}
        ends = {e.step_key: e.timestamp for e in events if e.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS}
        windows += [(starts[key], ends[key], f"{run_id[:8]}:{key}") for key in starts]
    return sorted(windows)


def test_parallel_profiling_and_registry_on_postgres(
    postgres, postgres_instance, tmp_path, monkeypatch, mmlu_like_dir, build_graph
):
    import mlflow
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    instance = postgres_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))  # the runs' processes read these too
    monkeypatch.setenv("UNIROUTE_CATALOG", str(tmp_path / "llms.yaml"))
    uri = postgres.url("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what MlflowResource() uses when given no tracking_uri
    resources = {**defs.resources, "artifacts": ArtifactsResource(root=str(tmp_path / "artifacts"))}
    catalog, run_config = tmp_path / "llms.yaml", tmp_path / "profile.json"
    run_config.write_text(json.dumps(PROFILE_RUN_CONFIG))  # JSON is YAML
    with ReplayServer(mmlu_like_dir, ReplayConfig(latency_ms=1000)) as server:  # asking takes seconds per LLM
        catalog.write_text(
            f"defaults: {{base_url: '{server.base_url}', max_concurrency: 8, usd_per_mtok_in: 1, usd_per_mtok_out: 1}}"
            "\n"
            f"llms: [{', '.join(f'{{name: {m}}}' for m in LLMS)}]\n"
        )
        setup = {
            "llm_catalog": {"config": {"path": str(catalog)}},
            "prompt_set": {"config": {"path": str(mmlu_like_dir)}},
        }
        assert dg.materialize(
            [llm_catalog, prompt_set], instance=instance, resources=resources, run_config={"ops": setup}
        ).success
        instance.add_dynamic_partitions(llm_partitions.name, LLMS)

        _profile_in_parallel(LLMS, run_config, tmp_path)
        asked = server.request_log.totals()
        # The rest of the graph as the other tests build it, on the same instance: embeddings, map, features, router.
        built = build_graph(instance, resources, mmlu_like_dir, catalog, LLMS, profile=False)

    # The runs: all succeeded and overlapped in time, in separate processes; they asked the endpoint at once (no
    # warehouse held while asking), and their warehouse steps took turns on DuckDB's file lock.
    records = instance.get_run_records(dg.RunsFilter(job_name="profile_llm"))
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == sorted(LLMS)
    assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
    assert max(r.start_time for r in records) < min(r.end_time for r in records)
    windows = _step_windows(instance, [r.dagster_run.run_id for r in records])
    assert len(windows) == 5 * len(LLMS)  # catalog, plan, stage, merge, grades
    asking = [w for w in windows if w[2].endswith("stage_responses")]
    assert [(a[2], b[2]) for a, b in itertools.pairwise(asking) if b[0] < a[1]]  # some asked at the same time

    # Postgres holds the event log: each partition materialised once, by its run.
    rows = postgres.query(
        "dagster",
        "SELECT partition, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
        "AND asset_key = %s GROUP BY partition ORDER BY partition",
        (dg.AssetKey("llm_responses").to_string(),),
    )
    assert rows == [(m, 1) for m in sorted(LLMS)]

    # Every answer asked once and graded as recorded: exactly the fixture's outcomes, no duplicates.
    assert asked == {"ok": 120 * len(LLMS)}
    recorded = pl.read_parquet(mmlu_like_dir / "responses.parquet").filter(pl.col("model").is_in(LLMS))
    expected = recorded.select(
        "model",
        (pl.lit("mmlu_pro/") + pl.col("question_id").cast(pl.String)).alias("prompt_id"),
        pl.col("correct").cast(pl.Float64).alias("score"),
    ).sort("model", "prompt_id")
    with wh.connect() as con:
        outcomes = wh.read_outcomes(con, LLMS).select("model", "prompt_id", "score").sort("model", "prompt_id")
        responses = wh.read_responses(con, LLMS)
    assert outcomes.equals(expected)
    assert responses.height == responses.select("model", "prompt_id").n_unique() == 120 * len(LLMS)

    # The router: version 1 with the champion alias, in the Postgres-backed registry.
    router = built["router"]
    assert router["version"] == "1" and router["alias"] == "champion" and sorted(_names(router["pool"])) == sorted(LLMS)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("uniroute", "champion").version) == "1"
    assert postgres.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases") == [
        ("uniroute", "champion", 1)
    ]


def _names(value) -> list[str]:
    """LLM names from the router's metadata: a list, or text joined by commas ("none" when empty)."""
    names = value if isinstance(value, list) else str(value).split(",")
    return [n.strip() for n in names if n.strip() and n.strip() != "none"]
