"""The daemon's work done in-process with a line per run: the demo and ``uniroute refresh`` share it.

:func:`quiet_libraries` keeps only those lines on screen (progress bars off, libraries' INFO logs off, warnings
still shown); :class:`ProgressLines` prints a run's line and keeps the router versions registered;
:func:`onboard` is one tick of the onboarding sensor with the profiling runs it requests; :func:`refine` one tick
of the nightly profiling schedule with its runs (a partial profile's refinement).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pipelines.ticks import QUIET, SCHEDULE_NAME_TAG, already_launched, sensor_run_tags, sensor_tick

#: Progress bars off (tqdm's own setting, and MLflow's artifact bars) and MLflow's logs from WARNING up.
QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """:data:`QUIET_ENVIRONMENT` (unless set; read by the libraries on import, so enter this before they are
    imported) and Dagster's logs from WARNING up; warnings still shown. MLflow needs nothing more: versions are
    registered through its client (:func:`serving.registry.register_router`), which prints no notes."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    yield


class RunFailed(RuntimeError):
    """A run in-process failed for another reason than a failing data check (its events are in the instance)."""


@dataclass
class ProgressLines:
    """Prints one line per run executed in-process (what it did, seconds, data checks that failed) and keeps the
    metadata of each router version a run registered. A run that failed but for a data check is
    :class:`RunFailed`, naming ``dagster_home`` where its events are."""

    dagster_home: Path
    versions: list[dict] = field(default_factory=list)
    runs: int = 0

    def run(self, title: str, result: dg.ExecuteInProcessResult, seconds: float) -> None:
        errors = [c for c in result.get_asset_check_evaluations() if c.severity == dg.AssetCheckSeverity.ERROR]
        failed = [c.check_name for c in errors if not c.passed]
        note = f"  data check failed ({', '.join(failed)}): left out" if failed else ""
        if not result.success and not failed:
            reason = failure_reason(result.all_events)
            raise RunFailed(f"{title}: run {result.run_id} failed: {reason}; see its events in {self.dagster_home}")
        self.runs += 1
        print(f"  {title:<58}{seconds:6.1f} s{note}", flush=True)
        for event in result.get_asset_materialization_events():
            if event.asset_key == dg.AssetKey("router"):
                self.versions.append({k: v.value for k, v in event.materialization.metadata.items()})

    def registered(self) -> list[dict]:
        """The versions registered, each once (a run that found nothing new records its version as unchanged)."""
        return list({str(v["version"]): v for v in self.versions if v.get("version")}.values())

    def automation_run(self, names: list[str], partition: str | None, result, seconds: float) -> None:
        """:meth:`run`, titled as :class:`pipelines.ticks.AutomationTicks` reports a run."""
        self.run(f"automation: {', '.join(names)}" + (f" [{partition}]" if partition else ""), result, seconds)


def failure_reason(events: Iterable[dg.DagsterEvent], limit: int = 300) -> str:
    """The first failed step of a run's ``events`` and what its op raised, on one line cut at ``limit`` characters
    (a ``dg.Failure``'s description, else the op's own exception, which Dagster wraps in a step-execution error)."""
    for event in events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                message = data.user_failure_data.description
            else:
                error = data.error
                if error is not None and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
                    error = error.cause  # Dagster's wrapper around what the op raised
                message = error.message if error is not None else "no error recorded"
            line = re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", " ".join(message.split()))  # the class, not its module
            line = line if len(line) <= limit else line[: limit - 3] + "..."
            return f"{event.step_key}: {line}"
    return "no step failed (the run itself did)"


def current_aliases(tracking_uri: str, model_name: str, versions: list[str]) -> dict[str, str]:
    """The aliases each version holds now, comma-separated, or ``-`` (one registered as champion may have been
    overtaken since)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return {v: ",".join(sorted(client.get_model_version(model_name, v).aliases)) or "-" for v in versions}


def onboard(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    resources: dict,
    on_run: Callable[[str, dg.ExecuteInProcessResult, float], None],
    ops: dict | None = None,
) -> int:
    """One tick of the onboarding sensor, then the profiling run it requests for each new or changed LLM, executed
    here with the tags the daemon gives it (``ops`` overrides their op config); a run key already in the instance
    (the daemon launched it) is skipped, as the daemon skips it. Returns the runs executed."""
    from pipelines.sensors import llm_onboarding_sensor

    tick = sensor_tick(llm_onboarding_sensor, instance, resources=resources)
    requests = tick.run_requests if isinstance(tick, dg.SensorResult) else []
    runs = [
        (
            f"sensor run: profile {request.partition_key}",
            request.partition_key,
            {"ops": {**request.run_config["ops"], **(ops or {})}},
            sensor_run_tags(llm_onboarding_sensor, request),
        )
        for request in requests
        if not already_launched(instance, llm_onboarding_sensor, request)
    ]
    return _profile(defs, instance, resources, runs, on_run)


def refine(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    resources: dict,
    on_run: Callable[[str, dg.ExecuteInProcessResult, float], None],
) -> int:
    """One tick of the nightly profiling schedule, then the profiling run it requests for each LLM with validation
    prompts still to answer (a partial profile's rest, new prompts, failures to retry), executed here with the
    schedule's tags. Returns the runs executed."""
    from pipelines.schedules import nightly_profiling_schedule

    # closed: its ``instance`` is one it opens, which would stay Dagster's current instance after it is gone
    with dg.build_schedule_context(instance=instance, resources={"warehouse": resources["warehouse"]}) as context:
        requests = nightly_profiling_schedule(context)
    runs = [
        (
            f"nightly run: profile {request.partition_key} ({request.tags.get('uniroute/pending', '?')} pending)",
            request.partition_key,
            request.run_config,
            {**request.tags, SCHEDULE_NAME_TAG: nightly_profiling_schedule.name},
        )
        for request in (requests if isinstance(requests, list) else [])
    ]
    return _profile(defs, instance, resources, runs, on_run)


def _profile(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    resources: dict,
    runs: list[tuple[str, str, dict, dict]],
    on_run: Callable[[str, dg.ExecuteInProcessResult, float], None],
) -> int:
    """Execute a ``profile_llm`` run here for each ``(title, partition, run_config, tags)``, quietly, each told to
    ``on_run`` with its seconds; returns the runs executed."""
    job = defs.resolve_job_def("profile_llm")
    for title, partition, run_config, tags in runs:
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=partition,
            instance=instance,
            resources=resources,
            run_config={**QUIET, **run_config},
            tags=tags,
            raise_on_error=False,
        )
        on_run(title, result, time.perf_counter() - started)
    return len(runs)
