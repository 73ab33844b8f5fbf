"""The daemon's work, in-process: a sensor tick and declarative-automation ticks whose runs execute right here.

``dagster-daemon`` does this in production; the demo, the onboarding benchmark and the tests call these functions so
the same sensor and automation conditions drive them without a daemon process. They read and write the state the
daemon keeps in the instance (each sensor's cursor, the automation evaluator's cursor) under the code location as
``dagster dev`` names it, and tag their runs as the daemon does, so a ``dagster dev`` started on the instance
afterwards carries on where they stopped: it launches nothing until something changes.

Dagster has no public API for that state; the few internals it takes are in the section "the daemon's state", and
``tests/pipelines/test_demo.py`` runs the daemon's own sensor and automation iterations against what the demo leaves.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

#: Console logs of in-process runs: their events and logs are in the instance (the Dagster UI shows them).
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The tags the daemon puts on the runs a sensor requests (it skips a request whose run key already ran).
SENSOR_NAME_TAG, RUN_KEY_TAG = "dagster/sensor_name", "dagster/run_key"
#: The tag the daemon puts on the runs a schedule requests.
SCHEDULE_NAME_TAG = "dagster/schedule_name"
AUTOMATION_SENSOR = "uniroute_automation_sensor"


@dataclass
class AutomationTicks:
    """Evaluates the automation conditions of ``defs`` tick after tick, executing each requested run.

    Starts from the automation sensor's cursor in ``instance`` (where the daemon keeps it) unless given one, and
    stores the new cursor after each evaluation, as the daemon does before it launches the runs. With
    ``beside_daemon``, each tick first reloads the cursor from the instance (a running daemon may have evaluated
    since) and leaves out the asset partitions a run in the instance is already materialising, so that neither
    launches what the other did.
    """

    defs: dg.Definitions
    instance: dg.DagsterInstance
    resources: Mapping[str, object]
    on_run: Callable[[list[str], str | None, dg.ExecuteInProcessResult, float], None] | None = None
    cursor: object = None
    runs: list[tuple[list[str], str | None]] = field(default_factory=list)
    sensor_name: str = AUTOMATION_SENSOR
    beside_daemon: bool = False

    def __post_init__(self) -> None:
        if self.cursor is None:
            self.cursor = load_automation_cursor(self.instance, self.sensor_name)

    def _sensor(self) -> dg.SensorDefinition:
        return next(s for s in self.defs.sensors or [] if s.name == self.sensor_name)

    def tick(self) -> list[tuple[list[str], str | None]]:
        """One evaluation; returns the runs it requested as (asset names, partition key), each executed.

        Like the daemon, requested assets are grouped into one run per partition key; the unpartitioned run
        goes first, since within one tick only an unpartitioned asset (the cluster map) precedes partitioned ones.
        """
        if self.beside_daemon:
            self.cursor = load_automation_cursor(self.instance, self.sensor_name)
        with warnings.catch_warnings():  # dagster's evaluator passes a beta parameter to itself
            warnings.simplefilter("ignore", dg.BetaWarning)
            result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        store_automation_cursor(self.instance, self._sensor(), result.cursor)
        graph = self.defs.resolve_asset_graph()
        busy = in_progress_partitions(self.instance) if self.beside_daemon else set()
        grouped: dict[str | None, list[dg.AssetKey]] = {}
        for key in graph.get_all_asset_keys():
            for partition in result.get_requested_partitions(key):
                if (key, partition) not in busy:
                    grouped.setdefault(partition, []).append(key)
        requested = sorted(grouped.items(), key=lambda item: (item[0] is not None, item[0] or ""))
        for partition, keys in requested:
            started = time.perf_counter()
            outcome = dg.materialize(
                list(self.defs.assets or []),
                selection=keys,
                partition_key=partition,
                instance=self.instance,
                resources=self.resources,
                run_config=QUIET,
                tags={"uniroute/trigger": "automation", SENSOR_NAME_TAG: self.sensor_name},
                raise_on_error=False,
            )
            names = [k.to_user_string() for k in keys]
            self.runs.append((names, partition))
            if self.on_run:
                self.on_run(names, partition, outcome, time.perf_counter() - started)
        return [([k.to_user_string() for k in keys], p) for p, keys in requested]

    def until_idle(self, max_ticks: int = 10) -> list[tuple[list[str], str | None]]:
        """Tick until a tick requests nothing; returns every run requested on the way."""
        done: list[tuple[list[str], str | None]] = []
        for _ in range(max_ticks):
            requested = self.tick()
            if not requested:
                return done
            done += requested
        raise RuntimeError(f"automation still requesting runs after {max_ticks} ticks: {done[-3:]}")


def sensor_tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    cursor: str | None = None,
    resources: Mapping[str, object] | None = None,
) -> dg.SensorResult | dg.SkipReason:
    """Evaluate ``sensor`` once, as the daemon would: from ``cursor`` (default: the one stored in ``instance``),
    with ``resources`` (default: the project's ``Definitions``), applying its partition requests and storing its
    new cursor. Launching the runs it requests is the caller's (:func:`sensor_run_tags` tags them)."""
    if resources is None:
        from pipelines.definitions import defs

        resources = defs.resources
    if cursor is None:
        cursor = load_sensor_cursor(instance, sensor.name)
    # closed: an instance the context opens must not stay Dagster's current instance after it is gone
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        last_key = next((r.run_key for r in reversed(result.run_requests or []) if r.run_key), None)
        store_sensor_cursor(instance, sensor, result.cursor if result.cursor is not None else cursor, last_key)
    else:
        store_sensor_cursor(instance, sensor, cursor)
    return result


def in_progress_partitions(instance: dg.DagsterInstance) -> set[tuple[dg.AssetKey, str | None]]:
    """(asset, partition key or None) of every asset a queued or running run in ``instance`` materialises."""
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    busy = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=NOT_FINISHED_STATUSES)):
        partition = run.tags.get("dagster/partition")
        busy |= {(key, partition) for key in run.asset_selection or ()}
    return busy


def already_launched(instance: dg.DagsterInstance, sensor: dg.SensorDefinition, request: dg.RunRequest) -> bool:
    """Whether a run for ``request``'s run key of ``sensor`` is already in ``instance`` (the daemon skips those)."""
    if not request.run_key:
        return False
    tags = {SENSOR_NAME_TAG: sensor.name, RUN_KEY_TAG: request.run_key}
    return bool(instance.get_run_ids(filters=dg.RunsFilter(tags=tags), limit=1))


def sensor_run_tags(sensor: dg.SensorDefinition, request: dg.RunRequest) -> dict[str, str]:
    """The tags of the run the daemon launches for ``request``: the request's own, the sensor's name and run key."""
    return {**request.tags, SENSOR_NAME_TAG: sensor.name, **({RUN_KEY_TAG: request.run_key} if request.run_key else {})}


# ---- the daemon's state ----------------------------------------------------------------------------------------


def code_location_origin():
    """The code location as ``dagster dev`` and ``dagster-daemon`` in the project root load it (pyproject.toml's
    ``[tool.dagster]``): the daemon keys each sensor's state by its name."""
    from dagster._core.workspace.load_target import PyProjectFileTarget

    [origin] = PyProjectFileTarget(str(PROJECT_ROOT / "pyproject.toml")).create_origins()
    return origin


def _sensor_origin(name: str):
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import RemoteInstigatorOrigin, RemoteRepositoryOrigin

    return RemoteInstigatorOrigin(RemoteRepositoryOrigin(code_location_origin(), SINGLETON_REPOSITORY_NAME), name)


def _stored_state(instance: dg.DagsterInstance, name: str):
    origin = _sensor_origin(name)
    return origin, instance.get_instigator_state(origin.get_id(), origin.get_selector().get_id())


def load_sensor_cursor(instance: dg.DagsterInstance, name: str) -> str | None:
    """The cursor the daemon keeps for sensor ``name`` in ``instance`` (None before its first tick)."""
    _, state = _stored_state(instance, name)
    return state.instigator_data.cursor if state is not None and state.instigator_data is not None else None


def store_sensor_cursor(
    instance: dg.DagsterInstance, sensor: dg.SensorDefinition, cursor: str | None, run_key: str | None = None
) -> None:
    """Record a successful tick of ``sensor`` now, with ``cursor``, as the daemon does (its status is kept: a sensor
    someone stopped stays stopped)."""
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        SensorInstigatorData,
    )

    origin, state = _stored_state(instance, sensor.name)
    previous = state.instigator_data if state is not None else None
    now = time.time()
    data = SensorInstigatorData(
        last_tick_timestamp=now,
        last_run_key=run_key or (previous.last_run_key if previous else None),
        min_interval=sensor.minimum_interval_seconds,
        cursor=cursor,
        last_tick_start_timestamp=now,
        last_sensor_start_timestamp=previous.last_sensor_start_timestamp if previous else now,
        sensor_type=sensor.sensor_type,
        last_tick_success_timestamp=now,
    )
    if state is None:
        instance.add_instigator_state(
            InstigatorState(origin, InstigatorType.SENSOR, InstigatorStatus.DECLARED_IN_CODE, data)
        )
    else:
        instance.update_instigator_state(state.with_data(data))


def load_automation_cursor(instance: dg.DagsterInstance, name: str = AUTOMATION_SENSOR):
    """The automation evaluator's cursor the daemon keeps for automation sensor ``name`` (None: none yet)."""
    from dagster._daemon.asset_daemon import asset_daemon_cursor_from_instigator_serialized_cursor

    stored = load_sensor_cursor(instance, name)
    return asset_daemon_cursor_from_instigator_serialized_cursor(stored, None) if stored else None


def store_automation_cursor(instance: dg.DagsterInstance, sensor: dg.SensorDefinition, cursor) -> None:
    """Store the evaluator's ``cursor`` (an ``AssetDaemonCursor``) in the automation sensor's state, serialised as
    the daemon does."""
    from dagster._daemon.asset_daemon import asset_daemon_cursor_to_instigator_serialized_cursor

    store_sensor_cursor(instance, sensor, asset_daemon_cursor_to_instigator_serialized_cursor(cursor))


@contextmanager
def daemon_workspace(instance: dg.DagsterInstance) -> Iterator[object]:
    """The project's code location under the name ``dagster dev`` gives it, loaded in this process: a workspace
    (``WorkspaceProcessContext``) for the daemon's own sensor and automation iterations, or for the UI's GraphQL
    queries, against ``instance``."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    target = LoadableTargetOrigin(module_name="pipelines.definitions", working_directory=str(PROJECT_ROOT))
    origin = InProcessCodeLocationOrigin(target, location_name=code_location_origin().location_name)
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        yield workspace
