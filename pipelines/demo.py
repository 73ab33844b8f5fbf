"""The pipeline end to end on ../shared/data/mmlu_pro, in-process: profile an initial pool, train the cluster
map, register router v1; then add LLMs to the catalog, let the onboarding sensor profile them on part of the
validation prompts (``onboarding.fraction``, 0.5 by default) and register v2 from their partial profiles with the
same cluster map; then the nightly profiling schedule's runs ask them the rest, and v3 (full profiles) is
registered if their features changed. Each version goes through the champion gate.

    python -m pipelines.demo [--sample 2000] [--full]

State lives under ``<data home>/demo`` (the warehouse and its artifacts are kept between runs, so embeddings,
answers and fitted maps are reused; the Dagster home and the MLflow registry start afresh each run). The sensor
and automation cursors are stored in the Dagster home as the daemon stores them, so ``dagster dev`` started on the
results launches nothing until something changes. The demo prints only its own lines: progress bars and the
libraries' INFO logs are configured off (warnings still show).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import polars as pl

from pipelines.progress import QUIET_ENVIRONMENT, ProgressLines, current_aliases, onboard, quiet_libraries, refine

__all__ = ["QUIET_ENVIRONMENT", "main", "write_catalog"]

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
    with quiet_libraries():
        return _run(args, home)


def _pool(value: object) -> set[str]:
    """A router version's pool from its metadata: a list, or a comma-separated text."""
    names = value if isinstance(value, list | tuple) else str(value).split(",")
    return {name.strip() for name in names if name.strip() and name.strip() != "none"}


def _archive_earlier_answers(path: Path, models: list[str]) -> None:
    """Run again, the added ``models`` are onboarded from nothing as on the first run (part of their validation
    prompts, then the rest), learning from the initial pool only: their answers of the earlier run are archived
    (``warehouse.archive_responses``, as a re-profiling does)."""
    from datetime import UTC, datetime

    import warehouse as wh

    if path.exists():
        with wh.connect(path) as con:
            moved = wh.archive_responses(con, models, collected_before=datetime.now(UTC))
        if moved:
            print(f"(run again: the {len(models)} LLMs added in step 2 onboard from nothing; {moved} answers archived)")


def _profiles(version: dict) -> str:
    """``full``, or how many of a version's LLMs have a partial profile (its ``profile`` metadata: ``full`` or
    ``partial (n of N, ...)``)."""
    profile = str(version.get("profile", "full"))
    return "full" if profile == "full" else f"{profile.count(' of ')} partial"


def _change(previous: dict | None, version: dict) -> str:
    """What a router version changed since the one before it: its pool, else its LLMs' profiles or features."""
    if previous is None:
        return "initial pool"
    before, after = _pool(previous["pool"]), _pool(version["pool"])
    changes = [f"added {', '.join(sorted(after - before))}"] if after - before else []
    changes += [f"removed {', '.join(sorted(before - after))}"] if before - after else []
    if not changes:
        partial_before = _profiles(previous) != "full"
        changes = ["profiles completed" if partial_before and _profiles(version) == "full" else "features changed"]
    return "; ".join(changes)


def _run(args: argparse.Namespace, home: Path) -> int:
    import dagster as dg

    from assets import profiling, routing
    from assets.resources import MlflowResource
    from pipelines.definitions import defs
    from pipelines.ticks import QUIET, AutomationTicks
    from replay import ReplayServer

    started = time.perf_counter()
    models = pl.read_csv(args.data / "models.csv").sample(fraction=1.0, shuffle=True, seed=0)
    initial, added = models.head(args.initial), models.slice(args.initial, args.added)
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    (home / "mlflow").mkdir(exist_ok=True)
    # the resources `dagster dev` resolves from the variables set above; the registry named outright, so that a
    # $MLFLOW_TRACKING_URI of the user's never receives the demo's versions
    resources = {**defs.resources, "mlflow": MlflowResource(tracking_uri=uri)}
    progress = ProgressLines(home / "dagster")

    _archive_earlier_answers(home / "warehouse.duckdb", added["model"].to_list())
    with ReplayServer(args.data) as server, dg.DagsterInstance.get() as instance:
        ticks = AutomationTicks(defs, instance, resources, on_run=progress.automation_run)
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
        progress.run("catalog, prompts (stratified sample)", result, time.perf_counter() - t)
        ticks.until_idle()  # embeds the new prompts
        # the initial pool also answers the training prompts: the cluster map learns from them; and every validation
        # prompt (run again, each is re-profiled: the replay endpoint's port, so each LLM's base_url, changed)
        initial_profile = {"splits": ["train", "validation", "test"], "onboarding": {"fraction": 1.0}}
        every_split = {"llm_responses": {"config": initial_profile}}
        onboard(defs, instance, resources, progress.run, every_split)
        t = time.perf_counter()
        # trained on the LLMs that answered training prompts (the initial pool) and pass their checks
        learned = {"kind": "learned", "n_clusters": 16}
        result = dg.materialize(
            [routing.cluster_map],
            resources=resources,
            instance=instance,
            run_config={**QUIET, "ops": {"cluster_map": {"config": learned}}},
        )
        progress.run("cluster map (learned, K=16) on the initial pool", result, time.perf_counter() - t)
        ticks.until_idle()  # features of every LLM, then router v1

        print(f"2. {args.added} LLMs added to the catalog; the onboarding sensor and automation take it from here")
        write_catalog(home / "llms.yaml", pl.concat([initial, added]), server.base_url)
        onboard(defs, instance, resources, progress.run)  # part of their validation prompts (onboarding.fraction)
        ticks.until_idle()  # their features with the same map, then router v2 (tagged partial unless 1.0)

        print("3. the nightly profiling schedule asks them the rest (refinement); automation follows")
        if refine(defs, instance, resources, progress.run):
            ticks.until_idle()  # their full profiles' features, then router v3 if they changed

    registered = progress.registered()
    aliases = current_aliases(uri, resources["mlflow"].model_name, [str(v["version"]) for v in registered])
    width = max([len(a) for a in aliases.values()] + [10]) + 2
    print(
        f"\n{'version':<9}{'alias':<{width}}{'pool':>5}{'AUDC':>9}{'Zero AUDC':>11}  cluster map   {'profiles':<11}"
        "what changed"
    )
    previous: dict | None = None
    for v in registered:
        print(
            f"{v['version']!s:<9}{aliases[str(v['version'])]:<{width}}{len(_pool(v['pool'])):>5}{v['audc']:>9.4f}"
            f"{v['zero_audc']:>11.4f}  {v['cluster_map_version']:<13} {_profiles(v):<11}{_change(previous, v)}"
        )
        previous = v
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
