"""The pipeline end to end on ../shared/data/mmlu_pro, in-process: profile an initial pool, train the cluster
map, register router v1; then add LLMs to the catalog, let the onboarding sensor profile them, and register v2
with the same cluster map.

    python -m pipelines.demo [--sample 2000] [--full]

State lives under ``<data home>/demo`` (the warehouse and its artifacts are kept between runs, so embeddings,
answers and fitted maps are reused; the Dagster home and the MLflow registry start afresh each run). The sensor
and automation cursors are stored in the Dagster home as the daemon stores them, so ``dagster dev`` started on the
results launches nothing until something changes. The demo prints only its own lines: progress bars and the
libraries' INFO logs are configured off (warnings still show).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "mmlu_pro"


def write_catalog(path: Path, models: pl.DataFrame, base_url: str) -> None:
    """An ``llms.yaml`` of ``models`` (columns ``model, usd_per_mtok``, as in models.csv) behind ``base_url``."""
    lines = [f"defaults: {{base_url: '{base_url}', max_concurrency: 64}}", "llms:"]
    lines += [
        f"  - {{name: {r['model']}, usd_per_mtok_in: {r['usd_per_mtok']}, usd_per_mtok_out: {r['usd_per_mtok']}}}"
        for r in models.iter_rows(named=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("UNIROUTE_MMLU_PRO_DIR", DEFAULT_DATA)))
    parser.add_argument("--sample", type=int, default=2000, help="stratified sample of questions")
    parser.add_argument("--full", action="store_true", help="every question")
    parser.add_argument("--initial", type=int, default=15, help="LLMs in the initial pool")
    parser.add_argument("--added", type=int, default=4, help="LLMs added afterwards through the sensor")
    args = parser.parse_args(argv)
    if not (args.data / "questions.parquet").exists():
        print(f"error: no MMLU-Pro data at {args.data}; set UNIROUTE_MMLU_PRO_DIR or pass --data", file=sys.stderr)
        return 2
    from warehouse.db import data_home

    home = data_home() / "demo"
    for fresh in ("dagster", "mlflow"):  # the warehouse and the artifacts it points at are kept
        shutil.rmtree(home / fresh, ignore_errors=True)
    (home / "dagster").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    os.environ.update(
        DAGSTER_HOME=str(home / "dagster"),
        UNIROUTE_WAREHOUSE=str(home / "warehouse.duckdb"),
        UNIROUTE_CATALOG=str(home / "llms.yaml"),
    )
    for name, value in QUIET_ENVIRONMENT.items():  # read by the libraries on import: set before any is imported
        os.environ.setdefault(name, value)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    with _mlflow_warnings_only():
        return _run(args, home)


#: Progress bars off (tqdm's own setting, and MLflow's artifact bars) and MLflow's logs from WARNING up.
QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


@contextmanager
def _mlflow_warnings_only() -> Iterator[None]:
    """MLflow prints registration notes ("Created version '2' ...") to its event stream whatever the log level:
    mute that stream with MLflow's own counted switch (its inner uses of the switch then leave it muted) and show
    MLflow's warnings and errors through a handler of ours."""
    from mlflow.utils import logging_utils
    from mlflow.utils.autologging_utils.logging_and_warnings import MlflowEventsAndWarningsBehaviorGlobally

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(logging_utils.LOGGING_LINE_FORMAT, logging_utils.LOGGING_DATETIME_FORMAT))
    logger = logging.getLogger("mlflow")
    logger.addHandler(handler)
    try:
        with MlflowEventsAndWarningsBehaviorGlobally(
            disable_event_logs=True, disable_warnings=False, reroute_warnings=False
        ):
            yield
    finally:
        logger.removeHandler(handler)


def _pool(value: object) -> set[str]:
    """A router version's pool from its metadata: a list, or a comma-separated text."""
    names = value if isinstance(value, list | tuple) else str(value).split(",")
    return {name.strip() for name in names if name.strip() and name.strip() != "none"}


def _aliases(uri: str, name: str, versions: list[str]) -> dict[str, str]:
    """The aliases each version holds now (a version registered as champion may have been overtaken since)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {v: ",".join(sorted(client.get_model_version(name, v).aliases)) or "-" for v in versions}


def _run(args: argparse.Namespace, home: Path) -> int:
    import dagster as dg

    from assets import profiling, routing
    from assets.resources import MlflowResource
    from pipelines.definitions import defs
    from pipelines.sensors import llm_onboarding_sensor
    from pipelines.ticks import QUIET, AutomationTicks, sensor_run_tags, sensor_tick
    from profiling.replay_server import ReplayServer

    started = time.perf_counter()
    models = pl.read_csv(args.data / "models.csv").sample(fraction=1.0, shuffle=True, seed=0)
    initial, added = models.head(args.initial), models.slice(args.initial, args.added)
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    (home / "mlflow").mkdir(exist_ok=True)
    # the resources `dagster dev` resolves from the variables set above; the registry named outright, so that a
    # $MLFLOW_TRACKING_URI of the user's never receives the demo's versions
    resources = {**defs.resources, "mlflow": MlflowResource(tracking_uri=uri)}
    versions: list[dict] = []

    def report(title: str, result, seconds: float) -> None:
        errors = [c for c in result.get_asset_check_evaluations() if c.severity == dg.AssetCheckSeverity.ERROR]
        failed = [c.check_name for c in errors if not c.passed]
        note = f"  data check failed ({', '.join(failed)}): left out" if failed else ""
        if not result.success and not failed:
            raise RuntimeError(f"{title}: run failed; see {home / 'dagster'}")
        print(f"  {title:<58}{seconds:6.1f} s{note}", flush=True)
        for event in result.get_asset_materialization_events():
            if event.asset_key == dg.AssetKey("router"):
                versions.append({k: v.value for k, v in event.materialization.metadata.items()})

    def automation_run(names: list[str], partition: str | None, result, seconds: float) -> None:
        report(f"automation: {', '.join(names)}" + (f" [{partition}]" if partition else ""), result, seconds)

    def onboard(ops: dict) -> None:
        """One sensor tick, then the profiling run it requests for each new LLM (the daemon would launch them)."""
        tick = sensor_tick(llm_onboarding_sensor, instance, resources=resources)
        job = defs.resolve_job_def("profile_llm")
        for request in tick.run_requests:
            t = time.perf_counter()
            result = job.execute_in_process(
                partition_key=request.partition_key,
                instance=instance,
                resources=resources,
                run_config={**QUIET, "ops": {**request.run_config["ops"], **ops}},
                tags=sensor_run_tags(llm_onboarding_sensor, request),
                raise_on_error=False,
            )
            report(f"sensor run: profile {request.partition_key}", result, time.perf_counter() - t)

    with ReplayServer(args.data) as server, dg.DagsterInstance.get() as instance:
        ticks = AutomationTicks(defs, instance, resources, on_run=automation_run)
        ticks.tick()  # the daemon is on before anything is materialised
        write_catalog(home / "llms.yaml", initial, server.base_url)
        print(f"1. initial pool of {args.initial} LLMs (replay endpoint {server.base_url})")
        t = time.perf_counter()
        prompts = {"prompt_set": {"config": {"path": str(args.data), "sample": None if args.full else args.sample}}}
        result = dg.materialize(
            [profiling.llm_catalog, profiling.prompt_set],
            resources=resources,
            instance=instance,
            run_config={**QUIET, "ops": prompts},
        )
        report("catalog, prompts (stratified sample)", result, time.perf_counter() - t)
        ticks.until_idle()  # embeds the new prompts
        # the initial pool also answers the training prompts: the cluster map learns from them
        onboard({"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}})
        t = time.perf_counter()
        # trained on the LLMs that answered training prompts (the initial pool) and pass their checks
        learned = {"kind": "learned", "n_clusters": 16}
        result = dg.materialize(
            [routing.cluster_map],
            resources=resources,
            instance=instance,
            run_config={**QUIET, "ops": {"cluster_map": {"config": learned}}},
        )
        report("cluster map (learned, K=16) on the initial pool", result, time.perf_counter() - t)
        ticks.until_idle()  # features of every LLM, then router v1

        print(f"2. {args.added} LLMs added to the catalog; the onboarding sensor and automation take it from here")
        write_catalog(home / "llms.yaml", pl.concat([initial, added]), server.base_url)
        onboard({})
        ticks.until_idle()  # their features with the same map, then router v2

    registered = list({str(v["version"]): v for v in versions if v.get("version")}.values())  # "unchanged": once
    aliases = _aliases(uri, resources["mlflow"].model_name, [str(v["version"]) for v in registered])
    width = max([len(a) for a in aliases.values()] + [10]) + 2
    print(f"\n{'version':<9}{'alias':<{width}}{'pool':>5}{'AUDC':>9}{'Zero AUDC':>11}  cluster map   what changed")
    previous: set[str] = set()
    for v in registered:
        pool = _pool(v["pool"])
        change = "initial pool" if not previous else "added " + ", ".join(sorted(pool - previous))
        print(
            f"{v['version']!s:<9}{aliases[str(v['version'])]:<{width}}{len(pool):>5}{v['audc']:>9.4f}"
            f"{v['zero_audc']:>11.4f}  {v['cluster_map_version']:<13} {change}"
        )
        previous = pool
    print(f"\ntotal {time.perf_counter() - started:.0f} s. Look at the results:")
    print(
        f"  DAGSTER_HOME={_shown(home / 'dagster')} UNIROUTE_WAREHOUSE={_shown(home / 'warehouse.duckdb')} "
        f"UNIROUTE_CATALOG={_shown(home / 'llms.yaml')} .venv/bin/dagster dev"
    )
    # re-roots a copied data home before the UI starts (plain `mlflow ui` on a copy serves the original's files)
    print(f"  UNIROUTE_WAREHOUSE={_shown(home / 'warehouse.duckdb')} .venv/bin/uniroute mlflow ui")
    return 0


def _shown(path: Path) -> Path:
    """``path`` relative to the project root (where the printed commands run) when under it: a copied project's
    commands then name its own files."""
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


if __name__ == "__main__":
    raise SystemExit(main())
