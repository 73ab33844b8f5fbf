"""The users' flows in a real browser: the Dagster UI shows the materialised lineage and its checks, the MLflow
UI shows the registered router with its champion alias. Headless Debian chromium driven by Playwright;
screenshots are kept under ``data/screenshots/`` (git-ignored) for people to look at."""

from __future__ import annotations

import sys

import dagster as dg
import pytest

from assets.profiling import graded_responses, llm_catalog, llm_partitions, llm_responses
from assets.resources import CollectorResource
from assets.router import router
from serving.processes import free_port, server_process, venv_env
from tests.ui.conftest import SCREENSHOTS, dagster_webserver, no_welcome_dialog, shot

pytestmark = pytest.mark.e2e  # a whole pipeline or server, end to end


@pytest.fixture(scope="module")
def materialised(tmp_path_factory, pipeline_snapshot):
    """A copy of the run's materialised graph (Dagster home, warehouse, MLflow registry; three fixture LLMs) plus one
    LLM, "last", whose endpoint is dead: no answers, so its coverage check fails (and blocks its grading). Then
    router v2 with a default cost weight set by its config: it leaves "last" out, saying why."""
    home = pipeline_snapshot.copy(tmp_path_factory.mktemp("ui") / "data")
    resources = home.resources(collector=CollectorResource(max_attempts=2, timeout_s=5.0))
    catalog = home.write_catalog(endpoints={"last": f"http://127.0.0.1:{free_port()}/v1"})
    with pytest.MonkeyPatch.context() as patch, home.instance() as instance:
        for key, value in home.env().items():
            patch.setenv(key, value)
        run_config = {"ops": {"llm_catalog": {"config": {"path": str(catalog)}}}}
        assert dg.materialize([llm_catalog], resources=resources, instance=instance, run_config=run_config).success
        instance.add_dynamic_partitions(llm_partitions.name, ["last"])
        profiled = dg.materialize(
            [llm_responses, graded_responses],
            partition_key="last",
            resources=resources,
            instance=instance,
            run_config={"ops": {"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}}},
            raise_on_error=False,
        )
        coverage = [e for e in profiled.get_asset_check_evaluations() if e.check_name.endswith("coverage")]
        assert [e.passed for e in coverage] == [False]
        weight = {"ops": {"router": {"config": {"default_cost_weight": 0.01}}}}
        assert dg.materialize([router], resources=resources, instance=instance, run_config=weight).success
    return home.root, home.env(), home.tracking_uri


def test_the_dagster_ui_shows_the_lineage_and_its_checks(materialised, browser, tmp_path):
    _, env, _ = materialised
    with dagster_webserver(env, tmp_path / "webserver.log") as url:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # the router's upstream lineage: every asset of both groups, expanded
        page.goto(f"{url}/assets/router?view=lineage&lineageScope=upstream&lineageDepth=6", wait_until="networkidle")
        no_welcome_dialog(page)
        for asset in ("llm_catalog", "prompt_set", "llm_responses", "graded_responses", "prompt_embeddings"):
            page.get_by_text(asset, exact=True).first.wait_for(timeout=60_000)
        for asset in ("cluster_map", "llm_error_features", "router"):
            page.get_by_text(asset, exact=True).first.wait_for(timeout=60_000)
        assert shot(page, "dagster_lineage.png").stat().st_size > 10_000
        page.goto(f"{url}/assets/llm_responses?view=checks", wait_until="networkidle")
        page.get_by_text("check_llm_responses_coverage").first.wait_for(timeout=60_000)
        shot(page, "dagster_checks.png")
        # the failing check of one LLM, named with its LLM and the numbers in the user's terms
        page.get_by_text("check_llm_responses_coverage").first.click()
        page.get_by_text("Failed").first.wait_for(timeout=60_000)
        page.get_by_text("last").first.wait_for(timeout=60_000)
        assert shot(page, "dagster_failing_check.png").stat().st_size > 10_000
        # the router's page: the per-LLM table, rounded headline numbers under short keys, the gate's numbers, the
        # LLM left out with its failing check and message, the link to its MLflow version
        page.goto(f"{url}/assets/router", wait_until="networkidle")
        for text in ("audc", "mlflow_version", "math-pro", "default_test_usd_per_1k", "gate_champion_audc"):
            page.get_by_text(text, exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("last: check_llm_responses_coverage failed: coverage 0% < 98%").first.wait_for(timeout=60_000)
        assert not page.get_by_text("champion_audc_same_test_set").count()
        assert shot(page, "dagster_router.png").stat().st_size > 10_000
        # the page scrolls inside its own pane: one view of the headline keys, one of what was left out
        for key, name in (
            ("default_test_usd_per_1k", "dagster_router_numbers.png"),
            ("left_out", "dagster_router_left_out.png"),
        ):
            cell = page.get_by_text(key, exact=True).first
            cell.scroll_into_view_if_needed()
            assert _fits_its_cell(cell), key  # drawn beside its value, not over it
            page.screenshot(path=str(SCREENSHOTS / name))
        page.close()


def _fits_its_cell(text) -> bool:
    """Whether a metadata key's text ends inside its table cell (a long key is drawn over the value beside it)."""
    return text.evaluate(
        """node => {
            const cell = node.closest("td") || node.parentElement;
            const range = document.createRange();
            range.selectNodeContents(node);
            return range.getBoundingClientRect().right <= cell.getBoundingClientRect().right + 0.5;
        }"""
    )


def test_the_mlflow_ui_shows_the_champion(materialised, browser, tmp_path):
    root, _, uri = materialised
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/health", tmp_path / "mlflow.log", venv_env(MLFLOW_DISABLE_TELEMETRY="true")):
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # not "networkidle": the UI keeps polling, so the network may never be idle for long enough
        page.goto(f"{url}/#/models/uniroute", wait_until="domcontentloaded")
        page.get_by_text("champion").first.wait_for(timeout=60_000)
        assert shot(page, "mlflow_champion.png").stat().st_size > 10_000
        # the version's model card: pool with costs per 1,000 queries, the LLM left out and why, the gate's reason,
        # AUDC against the prompt-blind baseline, how to call it (no absolute path)
        page.goto(f"{url}/#/models/uniroute/versions/2", wait_until="domcontentloaded")
        for text in ("ZeroRouter", "models:/uniroute@champion", "$ per 1,000 queries", "Champion gate"):
            page.get_by_text(text).first.wait_for(timeout=60_000)
        page.get_by_text("check_llm_responses_coverage failed: coverage 0% < 98%").first.wait_for(timeout=60_000)
        page.get_by_text("export MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db").first.wait_for(timeout=60_000)
        assert not page.get_by_text(str(root)).count()
        assert shot(page, "mlflow_model_card.png").stat().st_size > 10_000
        page.close()
