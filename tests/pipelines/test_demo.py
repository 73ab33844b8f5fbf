"""The demo's whole story on the fixture dataset: v1 on the initial pool, v2 after the sensor onboards more
(from partial profiles), v3 after the nightly schedule's runs complete them;
run again (as `make demo` twice: a new process), it reuses the warehouse, tells the same story and prints only its
own lines. Then the hand-off: the daemon's own sensor and automation iterations, started on the demo's results as
`dagster dev` would start them, launch nothing until the catalog changes, and the UI shows the cluster map and every
LLM's responses in sync.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

import warehouse as wh
from pipelines import demo
from tests.conftest import ui_stale_statuses

pytestmark = pytest.mark.e2e  # a whole pipeline or server, end to end

ROW = r"^(\d+)\s+([\w,-]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\w{12})\s+(full|\d+ partial)\s"
ARGS = ["--full", "--initial", "4", "--added", "2"]
DEMO_ENV = ("DAGSTER_HOME", "UNIROUTE_WAREHOUSE", "UNIROUTE_CATALOG", *demo.QUIET_ENVIRONMENT)
# what must not come between the demo's lines: progress bars, libraries' INFO lines, MLflow's registration notes
CHATTER = re.compile(r"\r|it/s\]|\d+%\|| INFO |registered model|Created version", re.IGNORECASE)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory, mmlu_like_dir, without_defs_state):
    """One in-process demo run in a fresh data home: (its data home, what it printed)."""
    home = tmp_path_factory.mktemp("data_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIROUTE_DATA_HOME", str(home))
        for name in DEMO_ENV:  # the demo sets these in os.environ: restored after the module
            patch.setenv(name, demo.QUIET_ENVIRONMENT.get(name, "unset"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), without_defs_state():
            assert demo.main(["--data", str(mmlu_like_dir), *ARGS]) == 0
        yield home, out.getvalue()


def test_demo_registers_three_versions_with_one_cluster_map_and_again_quietly(demo_home, mmlu_like_dir):
    home, first = demo_home
    # a new process, as `make demo` run again; nothing of the demo's own settings inherited from this one
    env = {k: v for k, v in os.environ.items() if k not in DEMO_ENV}
    again = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", "--data", str(mmlu_like_dir), *ARGS],
        env={**env, "UNIROUTE_DATA_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    tables = [re.findall(ROW, out, re.MULTILINE) for out in (first, again.stdout)]
    for rows in tables:
        assert [r[0] for r in rows] == ["1", "2", "3"]
        assert rows[0][5] == rows[1][5] == rows[2][5]  # the new LLMs and their refinement did not retrain the map
        assert int(rows[1][2]) > int(rows[0][2]) and rows[2][2] == rows[1][2]  # the pool grew, then refined
        # v2 from the new LLMs' partial profiles (onboarding.fraction's default), v3 once the nightly run completed them
        assert [r[6] for r in rows] == ["full", "2 partial", "full"]
        assert "champion" in rows[2][1].split(",") and "champion" not in rows[0][1].split(",")  # aliases held now
    assert tables[0] == tables[1]  # same data, same map, same routers
    with wh.connect_read_only(home / "demo" / "warehouse.duckdb") as con:  # every profile is full after refinement
        profiles = wh.read_profiles(con)
    assert profiles.height == 6 and not profiles["partial"].any()
    assert profiles["answered"].to_list() == profiles["total"].to_list()
    assert "dagster dev" in first and "mlflow ui" in first
    chatter = [line for line in (again.stderr + again.stdout).splitlines(keepends=True) if CHATTER.search(line)]
    assert not chatter, chatter[:5]


HANDOFF_QUERY = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { staleStatus staleCauses { reason } } }
}
"""


def _daemon_iterations(workspace, start: datetime, ticks: int) -> None:
    """What `dagster-daemon` does every interval: its sensor daemon's and its asset daemon's iterations, each a
    minute apart (over the sensors' minimum intervals), in this process."""
    import logging

    from dagster._core.test_utils import freeze_time
    from dagster._daemon.asset_daemon import AssetDaemon
    from dagster._daemon.sensor import execute_sensor_iteration

    instance = workspace.instance
    assets = AssetDaemon(settings=instance.get_auto_materialize_settings(), pre_sensor_interval_seconds=30)
    logger = logging.getLogger("test_handoff")
    for tick in range(ticks):
        with freeze_time(start + timedelta(seconds=61 * (tick + 1))):
            list(execute_sensor_iteration(workspace, logger, threadpool_executor=None, submit_threadpool_executor=None))
            assets._run_iteration_impl(workspace, threadpool_executor=None, amp_tick_futures={}, debug_crash_flags={})


def test_dagster_dev_on_the_demos_results_launches_nothing_until_the_catalog_changes(demo_home, monkeypatch):
    from dagster_graphql.test.utils import execute_dagster_graphql

    from pipelines.ticks import _sensor_origin, daemon_workspace, load_automation_cursor, load_sensor_cursor

    demo_dir = demo_home[0] / "demo"
    # the environment the demo's last lines tell the user to start `dagster dev` with
    monkeypatch.setenv("DAGSTER_HOME", str(demo_dir / "dagster"))
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(demo_dir / "warehouse.duckdb"))
    monkeypatch.setenv("UNIROUTE_CATALOG", str(demo_dir / "llms.yaml"))
    with dg.DagsterInstance.get() as instance, daemon_workspace(instance) as workspace:
        # the demo left the cursors where the daemon keeps them: every LLM of the catalog seen, automation evaluated
        seen = json.loads(load_sensor_cursor(instance, "llm_onboarding_sensor"))
        assert len(seen) == 6 and load_automation_cursor(instance).evaluation_id > 0
        before = instance.get_runs_count()
        start = datetime.now(UTC)
        _daemon_iterations(workspace, start, ticks=3)
        assert instance.get_runs_count() == before  # no profiling, no features, no router version
        for name in ("llm_onboarding_sensor", "uniroute_automation_sensor"):  # both did evaluate
            origin = _sensor_origin(name)
            ticks = instance.get_ticks(origin.get_id(), origin.get_selector().get_id(), limit=10)
            assert len(ticks) >= 2 and {t.status.value for t in ticks} == {"SKIPPED"}, (name, ticks)

        # the UI: the cluster map is in sync (it never follows grades, and new LLMs were graded after it)
        with workspace.create_request_context() as context:  # as the webserver serves a request
            node = execute_dagster_graphql(context, HANDOFF_QUERY, {"key": {"path": ["cluster_map"]}}).data
        assert node["assetNodeOrError"]["staleStatus"] == "FRESH", node
        # and every LLM's responses, the initial pool's too: profiling the added LLMs synced the catalog again
        llms = instance.get_dynamic_partitions("llm")
        assert ui_stale_statuses(workspace, "llm_responses", llms) == dict.fromkeys(seen, "FRESH")

        # and the daemon is live on the same catalog: a new entry gets exactly its profiling run
        catalog = Path(os.environ["UNIROUTE_CATALOG"])
        catalog.write_text(catalog.read_text() + "  - {name: newcomer, usd_per_mtok_in: 1, usd_per_mtok_out: 1}\n")
        _daemon_iterations(workspace, start + timedelta(minutes=4), ticks=1)
        runs = instance.get_runs()
        assert len(runs) == before + 1
        assert (runs[0].job_name, runs[0].tags.get("dagster/partition"), runs[0].tags["uniroute/onboarding"]) == (
            "profile_llm",
            "newcomer",
            "new",
        )
