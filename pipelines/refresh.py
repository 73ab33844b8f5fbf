"""``uniroute refresh``: what the daemon would do, now, in this process, on ``$DAGSTER_HOME``'s instance.

1. the onboarding sensor's tick: a partition and a profiling run for each new or changed catalog LLM;
2. a ``prompt_set`` run for each dataset the warehouse holds (``uniroute import-prompts``, ``import-results``)
   that no ``prompt_set`` materialisation has recorded at its size: the daemon cannot see a CLI import;
3. with ``--complete``, the nightly profiling schedule's tick and its runs: every LLM is asked the validation
   prompts it has not answered (the rest of a partial profile: a new LLM is first asked ``onboarding.fraction``);
4. automation ticks until one requests nothing: embeddings, cluster map, features per LLM partition, router.

The project's ``Definitions`` and their resources, as the daemon's runs get them; the runs are tagged as the
daemon tags them and the cursors are the daemon's (``pipelines.ticks``), so it is safe beside a running daemon:
a sensor run key already in the instance is skipped, and each automation tick reloads the cursor from the
instance and leaves out asset partitions a run is materialising. Prints a line per run, then what changed, and
which LLMs still have validation prompts to answer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from pipelines.progress import ProgressLines, current_aliases, failure_reason, onboard, quiet_libraries, refine
from pipelines.ticks import QUIET, AutomationTicks

#: The unpartitioned assets between the prompts and a router version, in order.
_CHAIN = ("prompt_embeddings", "cluster_map", "router")
#: LLMs named at most in refresh's line of validation prompts still to answer (the rest are counted).
_NAMED = 10


class NothingToRefresh(ValueError):
    """No instance to work on, or nothing in the warehouse to build from: a user error, one line."""


def refresh(complete: bool = False) -> int:
    """Bring ``$DAGSTER_HOME``'s instance, the warehouse and the registry up to date; returns the runs executed.
    ``complete``: also ask every LLM the validation prompts it has not answered (the nightly schedule's runs)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise NothingToRefresh(
            "DAGSTER_HOME is not set: refresh works on the Dagster instance the daemon uses; set it to a folder "
            "holding the project's dagster.yaml (docs/pipeline.md)"
        )
    with quiet_libraries():
        return _refresh(Path(home), complete)


def _refresh(home: Path, complete: bool) -> int:
    from pipelines.definitions import defs

    resources = defs.resources
    _check_something_to_build(resources["warehouse"])
    started = time.perf_counter()
    progress = ProgressLines(home)
    with dg.DagsterInstance.get() as instance:
        print(f"refresh: Dagster instance {home}, warehouse {resources['warehouse'].database()}", flush=True)
        ticks = AutomationTicks(defs, instance, resources, on_run=progress.automation_run, beside_daemon=True)
        if ticks.cursor is None:  # automation's first evaluation requests nothing: the daemon was on before this
            ticks.tick()
        onboard(defs, instance, resources, progress.run)
        _prompt_sets(defs, instance, resources, progress)
        if complete:
            refine(defs, instance, resources, progress.run)
        ticks.until_idle()
        failed = _failed_before(instance) if progress.runs == 0 else []
    _summary(progress, resources["mlflow"], time.perf_counter() - started, failed)
    _pending(resources["warehouse"])
    return progress.runs


def _check_something_to_build(warehouse) -> None:
    """Refuse a warehouse without prompts: nothing to profile, map or route."""
    import warehouse as wh

    path = warehouse.database()
    if not path.is_file():
        raise NothingToRefresh(f"nothing to refresh: no warehouse at {path}; import prompts or results first")
    with warehouse.connect_read_only() as con:
        datasets = wh.read_datasets(con)
    if datasets.height == 0:
        raise NothingToRefresh(
            f"nothing to refresh: the warehouse {path} holds no prompts; import some first "
            "(uniroute import-prompts or import-results)"
        )


def _prompt_sets(defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict, progress) -> None:
    """A ``prompt_set`` run (reading the dataset, as after ``uniroute import-prompts``) for each dataset whose size
    differs from the one its last ``prompt_set`` materialisation recorded: it is what automation follows."""
    import warehouse as wh

    with resources["warehouse"].connect_read_only() as con:
        sizes = dict(wh.read_datasets(con).select("name", "prompts").iter_rows())
    recorded: dict[str, int] = {}
    for record in instance.fetch_materializations(dg.AssetKey("prompt_set"), limit=1000).records:  # newest first
        meta = record.asset_materialization.metadata
        if "dataset" in meta and "dagster/row_count" in meta:
            recorded.setdefault(meta["dataset"].value, meta["dagster/row_count"].value)
    from assets.profiling import prompt_set

    for name, size in sorted(sizes.items()):
        if recorded.get(name) == size:
            continue
        started = time.perf_counter()
        result = dg.materialize(
            [prompt_set],
            instance=instance,
            resources=resources,
            run_config={**QUIET, "ops": {"prompt_set": {"config": {"dataset": name}}}},
            raise_on_error=False,
        )
        progress.run(f"prompts of dataset {name} ({size})", result, time.perf_counter() - started)


def _failed_before(instance: dg.DagsterInstance) -> list[str]:
    """A line for each asset of the router's chain whose last run failed: automation does not try a failed asset
    again until its inputs change, so "up to date" alone would hide that it has no current value."""
    failed = dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])
    said: set[str] = set()
    lines = []
    for run in instance.get_runs(filters=failed, limit=20):  # newest first
        events = [e for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
        for entry in events:
            step = entry.dagster_event.step_key
            if not entry.dagster_event.is_step_failure or step not in _CHAIN or step in said:
                continue
            said.add(step)
            done = instance.get_latest_materialization_event(dg.AssetKey(step))
            if done is not None and done.timestamp > entry.timestamp:
                continue
            reason = failure_reason(e.dagster_event for e in events)
            lines.append(
                f"refresh: {step} failed in run {run.run_id} ({reason}) and automation does not try it again until "
                "its inputs change; once the cause is fixed: dagster asset materialize -m pipelines.definitions "
                f"--select {step}, then uniroute refresh"
            )
    return lines


def _pending(warehouse) -> None:
    """A line naming the LLMs with validation prompts still to answer (a partial profile's rest, failures), if any."""
    import warehouse as wh

    with warehouse.connect_read_only() as con:
        pending = wh.pending_counts(con)
    if pending.height:
        shown = [f"{row['model']} ({row['pending']})" for row in pending.head(_NAMED).iter_rows(named=True)]
        names = ", ".join(shown) + (f" and {pending.height - _NAMED} more LLMs" if pending.height > _NAMED else "")
        print(
            f"refresh: validation prompts still to answer: {names}; `uniroute refresh --complete` asks them now "
            "(the nightly_profiling_schedule does when on)"
        )


def _summary(progress: ProgressLines, mlflow_resource, seconds: float, failed: list[str]) -> None:
    """What changed: the runs, and each router version registered with the aliases it holds now; with no run,
    the ``failed`` lines (:func:`_failed_before`) or "up to date"."""
    if progress.runs == 0:
        print("refresh: nothing launched" if failed else "refresh: up to date; nothing launched", *failed, sep="\n")
        return
    print(f"refresh: {progress.runs} runs in {seconds:.0f} s")
    registered = progress.registered()
    if not registered:
        print("  router: no new version (nothing reached it yet, or no LLM passed its checks)")
        return
    from serving import registry

    uri = mlflow_resource.tracking_uri or registry.default_tracking_uri()
    aliases = current_aliases(uri, mlflow_resource.model_name, [str(v["version"]) for v in registered])
    for v in registered:
        status = "unchanged" if v.get("status") == "unchanged" else "registered"
        audc = f", AUDC {v['audc']:.4f}" if isinstance(v.get("audc"), float) else ""
        print(
            f"  router {mlflow_resource.model_name} v{v['version']} {status}, alias "
            f"{aliases[str(v['version'])]}: pool {v.get('pool')}{audc}"
        )
