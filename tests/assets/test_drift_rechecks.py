"""drift_rechecks on a copy of the materialised pipeline (router v1 @champion in a real MLflow sqlite registry, a real
DuckDB file) with the replay endpoint the pool was profiled at serving again as a real HTTP server: an LLM that
silently got worse on one category after profiling is suspected from its traffic, asked again, confirmed and named
by its traffic check (ERROR), and its answers there are the new ones (the old ones archived); a suspected LLM that
did not change is asked again and cleared; re-running asks nothing; a tiny budget stops asking before it is passed."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

import dagster as dg
import httpx
import polars as pl
import pytest

import warehouse as wh
from assets.outcomes import TRAFFIC_CHECK, llm_traffic_evaluation, online_evaluation
from assets.rechecks import drift_rechecks
from pipelines.sensors import drift_confirmed_sensor
from profiling.recheck import prompt_clusters
from replay import ReplayServer
from tests.online_traffic import champion_shape, rated_request, traffic_frames

DEGRADED, STEADY, CATEGORY, SERVED_BY = "math-pro", "generalist", "math", "history-pro"
#: Prompts asked again per suspect cell: 12 all worse is a sign test's p of 0.5**12, past 3 SE; 8 would not be.
PER_CELL = 12


@pytest.fixture
def home(materialised_pipeline):
    return materialised_pipeline


def _cluster_of(home, category: str) -> tuple[int, pl.DataFrame]:
    """The champion's cluster holding most prompts of ``category``, and every validation and test prompt's cluster
    with its category and split."""
    from serving import registry

    with wh.connect(home.warehouse) as con:
        router = registry.version_router("uniroute", "1")
        clusters = prompt_clusters(con, router, registry.version_tags("uniroute", "1")["embedder_id"])
        prompts = clusters.join(wh.read_prompts(con).select("prompt_id", "category", "split"), on="prompt_id")
    mode = prompts.filter(pl.col("category") == category)["cluster"].mode()[0]
    return int(mode), prompts


def _traffic(cells: dict[tuple[str, int], int], k: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Router v1's decisions with each (LLM, cluster) of ``cells`` chosen that many times, every answer rated wrong
    (predicted error 0.25: all of them suspect)."""
    now = datetime.now(UTC)
    return traffic_frames(
        [rated_request(llm, cluster, k, 0.0, now) for (llm, cluster), count in cells.items() for _ in range(count)]
    )


def _setup(home, cells: dict[tuple[str, int], int], k: int) -> None:
    decisions, feedback = _traffic(cells, k)
    with wh.connect(home.warehouse) as con:
        wh.insert_routing_decisions(con, decisions)
        wh.insert_traffic_feedback(con, feedback)


def _materialise(home, instance, asset, config: dict | None = None, partition: str | None = None):
    name = asset.key.path[-1]
    run_config = {"ops": {name: {"config": config}}} if config else None
    result = dg.materialize(
        [asset], partition_key=partition, resources=home.resources(), instance=instance, run_config=run_config
    )
    assert result.success
    return result


def _meta(result, node: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def _asked(server: ReplayServer) -> pl.DataFrame:
    return server.request_log.frame().filter(pl.col("outcome") == "ok")


def _features_follow(instance, request: dg.RunRequest) -> list[str]:
    """Run the job the sensor requested as the daemon would; the LLMs whose features automation asks for next."""
    import warnings

    from pipelines.definitions import defs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        job = defs.resolve_job_def(drift_confirmed_sensor.job_name)
        run = job.execute_in_process(partition_key=request.partition_key, tags=request.tags, instance=instance)
        assert run.success
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    return sorted(after.get_requested_partitions(dg.AssetKey("llm_error_features")))


def _replay(home, data_dir) -> ReplayServer:
    """The replay endpoint again at the address the pool was profiled at (their answers stay current)."""
    return ReplayServer(data_dir, port=urlsplit(home.base_url).port)


def test_a_silent_degradation_is_confirmed_by_asking_again_and_an_unchanged_llm_is_cleared(home, mmlu_like_dir):
    llms, k = champion_shape(home.tracking_uri)
    math, prompts = _cluster_of(home, CATEGORY)
    steady_cluster = (math + 1) % k
    _setup(home, {(DEGRADED, math): 40, (STEADY, steady_cluster): 12}, k)  # 12: suspect, too few to alarm
    config = {"per_cell": PER_CELL}
    with _replay(home, mmlu_like_dir) as server, home.instance() as instance:
        rule = {"model": DEGRADED, "category": CATEGORY, "served_by": SERVED_BY}
        httpx.post(f"{server.url}/_replay/substitutions", json=rule).raise_for_status()
        _materialise(home, instance, online_evaluation, {"log_to_mlflow": False})
        first = _meta(_materialise(home, instance, drift_rechecks, config), "drift_rechecks")
        asked = _asked(server)
        again = _meta(_materialise(home, instance, drift_rechecks, config), "drift_rechecks")
        asked_again = _asked(server)
        checks = {
            llm: _materialise(home, instance, llm_traffic_evaluation, partition=llm).get_asset_check_evaluations()[0]
            for llm in llms
        }
        (request,) = drift_confirmed_sensor(dg.build_sensor_context(instance=instance)).run_requests
        features = _features_follow(instance, request)

    # (a) the degraded LLM: asked again on its suspect cluster's stored prompts, validation first, all worse
    degraded = asked.filter(pl.col("model") == DEGRADED).join(prompts, on="prompt_id")
    mine = degraded.filter(pl.col("cluster") == math)
    assert mine.height == PER_CELL
    # once confirmed there, its other clusters were asked again too (whole_llm), each recorded
    assert set(degraded["cluster"]) == set(range(k)) and degraded.height > PER_CELL
    for other in set(range(k)) - {math}:
        assert f"| {DEGRADED} | {other} | 0 | " in first["rechecked"]
    validation = prompts.filter((pl.col("cluster") == math) & (pl.col("split") == "validation"))
    assert set(validation["prompt_id"]) <= set(mine["prompt_id"])
    assert set(mine.filter(pl.col("category") == CATEGORY)["served_by"]) == {SERVED_BY}
    head = f"{DEGRADED} cluster {math}: asked again {PER_CELL} prompts, {PER_CELL} worse and 0 better"
    assert first["confirmed"].startswith(head) and first["confirmed_llms"] == [DEGRADED]
    assert f"| {DEGRADED} | {math} | 40 | {PER_CELL} | {PER_CELL} | 0 |" in first["rechecked"]
    assert first["prompts_asked"] == first["prompts_planned"] == asked.height and first["usd_spent"] > 0
    bad = checks.pop(DEGRADED)
    assert (bad.check_name, bad.passed, bad.severity) == (TRAFFIC_CHECK, False, dg.AssetCheckSeverity.ERROR)
    assert bad.description.startswith(f"confirmed by asking again: {head}")
    assert f"traffic: {DEGRADED}, cluster {math}: observed error 1.00 over 40 requests" in bad.description
    assert bad.metadata["confirmed_clusters"].value == [math]
    # its answers there are the new ones, graded; the paid earlier ones are kept in the archive with their grades
    ids = mine["prompt_id"].to_list()
    with wh.connect(home.warehouse) as con:
        now = wh.read_recheck_answers(con, DEGRADED, ["validation", "test"]).filter(pl.col("prompt_id").is_in(ids))
        archived = con.execute(
            "SELECT count(*), min(reason), min(g.score) FROM responses_archive r JOIN grades_archive g "
            "USING (model, prompt_id, archived_at) WHERE model = ?",
            [DEGRADED],
        ).fetchall()
    assert now["new_score"].to_list() == [0.0] * PER_CELL and now["score"].to_list() == [1.0] * PER_CELL
    assert archived[0][:2] == (degraded.height, "drift re-check")
    # its features follow: the sensor launches the LLM's grades and checks, and automation its features after them
    assert request.partition_key == DEGRADED and features == [DEGRADED]

    # (b) the unchanged LLM, suspected from its traffic: asked again, not confirmed, no alarm
    steady = asked.filter(pl.col("model") == STEADY)
    assert 0 < steady.height <= PER_CELL and set(steady["served_by"]) == {STEADY}
    assert f"| {STEADY} | {steady_cluster} | 12 | {steady.height} | 0 | 0 |" in first["rechecked"]
    assert checks.pop(STEADY).passed
    assert all(check.passed for check in checks.values())

    # (c) re-running the asset asks nothing again: both cells were checked for this suspicion
    assert asked_again.equals(asked)
    assert again["prompts_asked"] == 0 and again["rechecked_cells"] == 0
    assert f"{DEGRADED} cluster {math}: asked again at 40 rated requests; not again before 45" in again["notes"]


def test_a_tiny_budget_stops_asking_before_it_is_passed(home, mmlu_like_dir):
    _, k = champion_shape(home.tracking_uri)
    math, _ = _cluster_of(home, CATEGORY)
    _setup(home, {(DEGRADED, math): 40}, k)
    budget = 0.0015  # a few requests' worst case (their prompt and 512 answer tokens at 1 USD per million)
    with _replay(home, mmlu_like_dir) as server, home.instance() as instance:
        _materialise(home, instance, online_evaluation, {"log_to_mlflow": False})
        meta = _meta(_materialise(home, instance, drift_rechecks, {"budget_usd": budget}), "drift_rechecks")
        asked = _asked(server)

    assert 0 < meta["prompts_asked"] == asked.height < meta["prompts_planned"]
    assert meta["prompts_not_asked_budget"] == meta["prompts_planned"] - asked.height
    assert meta["usd_spent"] <= budget
    assert meta["budget"].startswith("drift re-check budget reached: ") and "\n" not in meta["budget"]
    assert "raise drift_rechecks.config.budget_usd" in meta["budget"]
    with wh.connect(home.warehouse) as con:
        paid = con.execute(
            "SELECT sum(cost_usd) FROM responses WHERE model = ? AND list_contains(?, prompt_id)",
            [DEGRADED, asked["prompt_id"].to_list()],
        ).fetchall()[0][0]
    assert 0 < paid <= budget
