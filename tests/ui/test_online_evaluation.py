"""The traffic loop in the Dagster UI: after the gateway's decisions and ratings of a copy of the materialised pipeline
(one LLM degraded on one cluster) go through the ``traffic_loop`` job, the ``online_evaluation`` page shows its tables
and plots, and ``llm_traffic_evaluation`` the degraded LLM's warning, naming the cluster and the counts."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.outcomes import TRAFFIC_CHECK, llm_traffic_evaluation
from tests.conftest import SNAPSHOT_LLMS
from tests.online_traffic import CLUSTER, DEGRADED, champion_shape, degraded_traffic, write_gateway_files
from tests.ui.conftest import dagster_webserver, no_welcome_dialog, shot

pytestmark = pytest.mark.e2e  # a whole pipeline or server, end to end

#: The metadata drawn as images, and the tables with a text each must show.
PLOTS = ("reliability", "quality_vs_cost", "drift_heatmap")
TABLES = {"by_llm": "generalist", "by_cluster": DEGRADED}
ALARM = f"{DEGRADED}, cluster {CLUSTER}: observed error 1.00 over 100 requests"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, pipeline_snapshot) -> dict[str, str]:
    """A copy of the snapshot whose gateway logged traffic with DEGRADED wrong on every request of CLUSTER, rated;
    the traffic loop run, then each LLM's evaluation (the degraded one last). Returns the home's environment."""
    from pipelines.definitions import defs

    home = pipeline_snapshot.copy(tmp_path_factory.mktemp("ui_online") / "data")
    with pytest.MonkeyPatch.context() as patch, home.instance() as instance:
        for key, value in home.env().items():
            patch.setenv(key, value)
        llms, k = champion_shape(home.tracking_uri)
        write_gateway_files(home.warehouse, *degraded_traffic(llms, k))
        assert defs.resolve_job_def("traffic_loop").execute_in_process(instance=instance).success
        for llm in sorted(llms, key=lambda name: name == DEGRADED):
            run = dg.materialize(
                [llm_traffic_evaluation], partition_key=llm, resources=defs.resources, instance=instance
            )
            (check,) = run.get_asset_check_evaluations()
            assert check.passed == (llm != DEGRADED)
    return home.env()


def test_the_online_evaluation_page_shows_its_tables_plots_and_the_degraded_llms_warning(evaluated, browser, tmp_path):
    with dagster_webserver(evaluated, tmp_path / "webserver.log") as url:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/assets/online_evaluation", wait_until="networkidle")
        no_welcome_dialog(page)
        page.get_by_text(ALARM).first.wait_for(timeout=60_000)  # the alarms line
        assert shot(page, "dagster_online_evaluation.png").stat().st_size > 10_000
        for key, text in TABLES.items():
            shown = _show_markdown(page, key)
            shown.get_by_role("table").first.wait_for(timeout=30_000)
            shown.get_by_text(text, exact=True).first.wait_for(timeout=30_000)
            shot(page, f"dagster_online_evaluation_{key}.png", full_page=False)
            _close(page)
        for key in PLOTS:
            image = _show_markdown(page, key).locator("img").first
            image.wait_for(timeout=30_000)
            assert image.evaluate("img => img.complete && img.naturalWidth > 300"), key  # a decoded plot
            assert shot(page, f"dagster_online_evaluation_{key}.png", full_page=False).stat().st_size > 10_000
            _close(page)
        # the degraded LLM's check: failed as a warning (not an error), naming the LLM, the cluster and the counts
        page.goto(f"{url}/assets/llm_traffic_evaluation?view=checks", wait_until="networkidle")
        page.get_by_text(TRAFFIC_CHECK).filter(visible=True).first.click()
        page.get_by_text(ALARM).first.wait_for(timeout=60_000)
        result = page.locator(".BaseTag").filter(has_text="Failed")
        result.get_by_role("img", name="warning_outline").wait_for(timeout=60_000)
        page.get_by_text(DEGRADED, exact=True).first.wait_for(timeout=60_000)  # the partition evaluated
        assert shot(page, "dagster_traffic_check_warning.png").stat().st_size > 10_000
        # and per partition: the degraded LLM failed, the other two passed
        page.get_by_text("Partitions", exact=True).last.click()
        for text in ("Failed (1)", f"Passed ({len(SNAPSHOT_LLMS) - 1})"):
            page.get_by_text(text, exact=True).first.wait_for(timeout=60_000)
        assert shot(page, "dagster_traffic_check_partitions.png").stat().st_size > 10_000
        page.close()


def _show_markdown(page, key: str):
    """Where the Markdown value of metadata ``key`` shows: its row (a short value is drawn in it), or the dialog its
    "[Show Markdown]" button opens (a long one)."""
    row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first
    row.scroll_into_view_if_needed()
    button = row.get_by_text("[Show Markdown]")
    if not button.count():
        return row
    button.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=30_000)
    return dialog


def _close(page) -> None:
    """Close the Markdown dialog, if one is open, with its Close button: an Escape pressed before the dialog takes the
    focus is lost (CI once waited 30 s on a dialog that never heard it)."""
    dialog = page.get_by_role("dialog")
    if dialog.count():
        dialog.get_by_role("button", name="Close", exact=True).click()
        dialog.wait_for(state="detached", timeout=30_000)
