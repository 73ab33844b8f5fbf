"""The daemon's work, in-process: a sensor tick and declarative-automation ticks whose runs execute right here.

``dagster-daemon`` does this in production; the demo, the onboarding benchmark and the tests call these
functions so the same sensor and automation conditions drive them without a daemon process.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dagster as dg

#: Console logs of in-process runs: their events and logs are in the instance (the Dagster UI shows them).
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class AutomationTicks:
    """Evaluates the automation conditions of ``defs`` tick after tick, executing each requested run."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    resources: Mapping[str, object]
    on_run: Callable[[list[str], str | None, dg.ExecuteInProcessResult, float], None] | None = None
    cursor: object = None
    runs: list[tuple[list[str], str | None]] = field(default_factory=list)

    def tick(self) -> list[tuple[list[str], str | None]]:
        """One evaluation; returns the runs it requested as (asset names, partition key), each executed.

        Like the daemon, requested assets are grouped into one run per partition key; the unpartitioned run
        goes first, since within one tick only an unpartitioned asset (the cluster map) precedes partitioned ones.
        """
        with warnings.catch_warnings():  # dagster's evaluator passes a beta parameter to itself
            warnings.simplefilter("ignore", dg.BetaWarning)
            result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        graph = self.defs.resolve_asset_graph()
        grouped: dict[str | None, list[dg.AssetKey]] = {}
        for key in graph.get_all_asset_keys():
            for partition in result.get_requested_partitions(key):
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
                tags={"uniroute/trigger": "automation"},
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
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None = None
) -> dg.SensorResult | dg.SkipReason:
    """Evaluate ``sensor`` once and apply its partition requests, as the daemon would before launching runs."""
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result
