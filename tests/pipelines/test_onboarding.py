"""A new LLM onboarded on part of the validation set, on a materialised pipeline (router v1 @champion in a real
MLflow registry, a real DuckDB file, a replay endpoint as a real HTTP server): its router version is tagged
``profile: partial (n of N)`` through the champion gate, a refinement run asks the rest and the next version is
full; a fraction of 1.0 asks everything and gives today's Psi exactly; the onboarding sensor's runs carry the
estimate."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient

import warehouse as wh
from assets.profiling import graded_responses, llm_catalog, llm_responses
from assets.router import router
from assets.routing import llm_error_features
from replay import ReplayServer
from router_core import error_matrix, load_cluster_map
from router_core import llm_error_features as compute_psi

NEW = "history-pro"  # a specialist of the fixture the snapshot's pool lacks


@pytest.fixture
def home(materialised_pipeline):
    return materialised_pipeline


def _meta(result: dg.ExecuteInProcessResult, node: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def _run(home, instance, assets, partition=None, ops=None) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        assets, partition_key=partition, resources=home.resources(), instance=instance, run_config={"ops": ops or {}}
    )
    assert result.success
    return result


def _onboard(home, instance, server: ReplayServer, fraction: float) -> dict:
    """Sync a catalog with NEW at ``server``, then profile it (``fraction``: its onboarding) and grade it; the
    responses' metadata."""
    home.write_catalog(endpoints={NEW: server.base_url})
    _run(home, instance, [llm_catalog], ops={"llm_catalog": {"config": {"path": str(home.catalog)}}})
    result = _run(home, instance, [llm_responses, graded_responses], NEW, _onboarding(fraction))
    return _meta(result, "llm_responses")


def _onboarding(fraction: float) -> dict:
    return {"llm_responses": {"config": {"onboarding": {"fraction": fraction}}}}


def _asked_validation(server: ReplayServer, validation: set[str]) -> set[str]:
    served = server.request_log.frame().filter((pl.col("model") == NEW) & (pl.col("outcome") == "ok"))
    return set(served["prompt_id"]) & validation


def _version_tags(home, version) -> dict[str, str]:
    return MlflowClient(tracking_uri=home.tracking_uri).get_model_version("uniroute", str(version)).tags


def _served_psi(home, version) -> dict[str, np.ndarray]:
    """Each LLM's Psi in the registered pyfunc of ``version``: what the gateway serves."""
    import mlflow

    from serving import registry

    registry.configure(home.tracking_uri)
    try:
        served = mlflow.pyfunc.load_model(f"models:/uniroute/{version}").unwrap_python_model().router
    finally:
        mlflow.set_tracking_uri(None)
    return dict(zip(served.llms_, served.psi_, strict=True))


def _stored_and_mean_psi(home, model: str) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s stored features under the current cluster map, and the plain per-cluster mean of its validation
    errors (today's Psi of what it answered)."""
    with wh.connect(home.warehouse) as con:
        latest = wh.latest_cluster_map(con)
        ids, x = wh.read_prompt_vectors(con, latest["embedder_id"], ["validation"])
        errors = error_matrix(wh.read_outcomes(con, [model], ["validation"]), ids, [model])
        stored = wh.read_llm_features(con, latest["version"]).filter(pl.col("model") == model)["psi"][0].to_list()
    return np.asarray(stored), compute_psi(load_cluster_map(latest["path"]).transform(x), errors)[0]


def test_a_partial_profiles_router_version_is_tagged_then_refined_to_a_full_one(home, mmlu_like_dir, monkeypatch):
    from pipelines.schedules import nightly_profiling_schedule

    monkeypatch.setenv("UNIROUTE_ONBOARDING_FRACTION", "0.5")
    with wh.connect(home.warehouse) as con:
        validation = set(wh.read_prompts(con, splits=["validation"])["prompt_id"])
    n = len(validation)
    with ReplayServer(mmlu_like_dir) as server, home.instance() as instance:
        responses = _onboard(home, instance, server, fraction=0.5)
        first = _asked_validation(server, validation)
        assert len(first) == n // 2 and responses["profile"] == f"{n // 2} of {n} validation prompts (partial)"
        assert responses["onboarding_usd"] > 0
        features = _meta(_run(home, instance, [llm_error_features], NEW), "llm_error_features")
        assert features["profile"] == f"partial ({n // 2} of {n})"
        partial = _meta(_run(home, instance, [router]), "router")
        assert NEW in partial["pool"] and partial["status"].startswith("registered")
        assert partial["profile"] == f"partial ({n // 2} of {n})"
        tags = _version_tags(home, partial["version"])
        assert tags["profile"] == f"partial ({n // 2} of {n})" and tags["profile_partial_llms"] == NEW
        assert "gate" in tags  # through the champion gate as any version
        card = MlflowClient(tracking_uri=home.tracking_uri).get_model_version("uniroute", str(partial["version"]))
        assert f"- partial profiles: {NEW} {n // 2} of {n} validation prompts (" in card.description
        rows = {r.data["LLM"]: r.data for r in partial["llms"].records}
        assert rows[NEW]["profile"] == f"{n // 2} of {n} (partial)" and rows[NEW]["onboarding USD"] > 0
        assert rows["cheap"]["profile"] == f"{n} of {n}"
        estimated, mean = _stored_and_mean_psi(home, NEW)
        served = _served_psi(home, partial["version"])
        assert not np.allclose(estimated, mean)  # the estimator learned from the other LLMs too
        assert np.array_equal(served[NEW], estimated)  # the router serves the estimator's Psi, not the mean
        with wh.connect(home.warehouse) as con:  # features that change with the same answers: a new version
            latest = wh.latest_cluster_map(con)["version"]
            row = wh.read_llm_features(con, latest).filter(pl.col("model") == NEW)
            wh.upsert_llm_features(con, row.with_columns(pl.col("psi").list.eval(pl.element() / 2)))
        moved = _meta(_run(home, instance, [router]), "router")
        assert moved["status"].startswith("registered") and moved["version"] != partial["version"]
        assert np.array_equal(_served_psi(home, moved["version"])[NEW], estimated / 2)

        # refinement: the nightly tick finds NEW's other validation prompts pending, and its run asks them
        nightly = nightly_profiling_schedule(
            dg.build_schedule_context(instance=instance, resources={"warehouse": home.resources()["warehouse"]})
        )
        [request] = [r for r in nightly if r.partition_key == NEW]
        assert request.tags["uniroute/pending"] == str(n - n // 2)
        assert request.run_config == {"ops": _onboarding(0.5)}  # UNIROUTE_ONBOARDING_FRACTION, kept for refinement
        refined = _run(home, instance, [llm_responses, graded_responses], NEW, request.run_config["ops"])
        assert _meta(refined, "llm_responses")["profile"] == f"{n} of {n} validation prompts"
        assert _asked_validation(server, validation) == validation  # the other half, each asked once
        assert server.request_log.frame().filter(pl.col("model") == NEW)["count"].max() == 1
        _run(home, instance, [llm_error_features], NEW)
        full = _meta(_run(home, instance, [router]), "router")
        assert full["status"].startswith("registered") and full["version"] != partial["version"]
        assert full["profile"] == "full" and "profile" not in _version_tags(home, full["version"])
        again = _meta(_run(home, instance, [router]), "router")  # nothing changed: nothing registered
        assert again["status"].startswith("unchanged") and again["version"] == full["version"]


def test_an_llm_whose_answers_were_archived_is_not_learned_from(home, mmlu_like_dir):
    # "cheap" is re-profiled (its answers archived, none asked again yet): its features remain, but nothing current
    # stands behind them, so the planner and the estimator leave it out instead of failing on it
    with wh.connect(home.warehouse) as con:
        validation = set(wh.read_prompts(con, splits=["validation"])["prompt_id"])
        assert wh.archive_responses(con, ["cheap"], collected_before=datetime.now(UTC)) > 0
    n = len(validation)
    with ReplayServer(mmlu_like_dir) as server, home.instance() as instance:
        responses = _onboard(home, instance, server, fraction=0.5)
        assert len(_asked_validation(server, validation)) == n // 2
        assert responses["profile"] == f"{n // 2} of {n} validation prompts (partial)"
        features = _meta(_run(home, instance, [llm_error_features], NEW), "llm_error_features")
    assert features["profile"] == f"partial ({n // 2} of {n})"


def test_a_fraction_of_one_asks_everything_and_gives_todays_psi_exactly(home, mmlu_like_dir):
    with wh.connect(home.warehouse) as con:
        validation = set(wh.read_prompts(con, splits=["validation"])["prompt_id"])
    with ReplayServer(mmlu_like_dir) as server, home.instance() as instance:
        responses = _onboard(home, instance, server, fraction=1.0)
        assert _asked_validation(server, validation) == validation
        assert responses["profile"] == f"{len(validation)} of {len(validation)} validation prompts"
        _run(home, instance, [llm_error_features], NEW)
        version = _meta(_run(home, instance, [router]), "router")
    stored, today = _stored_and_mean_psi(home, NEW)
    assert np.array_equal(stored, today)  # exactly, not approximately
    assert np.array_equal(_served_psi(home, version["version"])[NEW], today)  # and served as it is
    assert version["profile"] == "full" and "profile" not in _version_tags(home, version["version"])


def test_the_onboarding_sensors_runs_carry_the_estimate(home, mmlu_like_dir, monkeypatch):
    from assets.resources import WarehouseResource
    from pipelines.sensors import llm_onboarding_sensor
    from profiling.onboarding import estimate_onboarding

    monkeypatch.setenv("UNIROUTE_ONBOARDING_FRACTION", "0.5")
    monkeypatch.setenv("UNIROUTE_ONBOARDING_BUDGET_USD", "0.25")
    home.write_catalog(endpoints={NEW: "http://127.0.0.1:9/v1"})
    warehouse = WarehouseResource(path=str(home.warehouse), catalog_path=str(home.catalog))
    with home.instance() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"warehouse": warehouse})
        result = llm_onboarding_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    requests = {r.partition_key: r for r in result.run_requests}
    request = requests[NEW]
    entry = wh.load_catalog(home.catalog).filter(pl.col("name") == NEW).row(0, named=True)
    with wh.connect_read_only(home.warehouse) as con:
        expected = estimate_onboarding(con, entry, ["validation", "test"], 0.5)
        n_test = wh.read_prompts(con, splits=["test"]).height
    assert expected.validation_prompts == 6 and expected.prompts == 6 + n_test  # half the validation, every test
    assert request.tags["uniroute/estimate_prompts"] == str(expected.prompts)
    assert request.tags["uniroute/estimate_usd"] == f"{expected.usd:.4f}"
    assert request.tags["uniroute/estimate_tokens"] == str(expected.prompt_tokens + expected.completion_tokens)
    assert (request.tags["uniroute/onboarding_fraction"], request.tags["uniroute/budget_usd"]) == ("0.5", "0.25")
    onboarding = request.run_config["ops"]["llm_responses"]["config"]["onboarding"]
    assert onboarding == {"fraction": 0.5, "budget_usd": 0.25}


def test_a_budget_stops_the_profiling_run_and_the_llm_keeps_a_partial_profile(home, mmlu_like_dir):
    from profiling.onboarding import estimate_onboarding

    with ReplayServer(mmlu_like_dir) as server, home.instance() as instance:
        home.write_catalog(endpoints={NEW: server.base_url})
        _run(home, instance, [llm_catalog], ops={"llm_catalog": {"config": {"path": str(home.catalog)}}})
        with wh.connect_read_only(home.warehouse) as con:
            entry = wh.read_llms(con).filter(pl.col("name") == NEW).row(0, named=True)
            full = estimate_onboarding(con, entry, ["validation"], 1.0)
        # one request's worst case and a half: the answers (far below their worst case) take it a few at a time
        budget = 1.5 * full.usd / full.prompts
        onboarding = {"fraction": 1.0, "budget_usd": budget}
        config = {"llm_responses": {"config": {"splits": ["validation"], "onboarding": onboarding}}}
        result = _run(home, instance, [llm_responses], NEW, config)
        served = server.request_log.frame().filter((pl.col("model") == NEW) & (pl.col("outcome") == "ok"))
    meta = _meta(result, "llm_responses")
    with wh.connect_read_only(home.warehouse) as con:
        costs = wh.read_responses(con, [NEW]).select("prompt_id", "cost_usd")
        profile = wh.read_profiles(con, [NEW]).row(0, named=True)
    spent = served.join(costs, on="prompt_id")
    assert spent.height == served.height and float((spent["cost_usd"] * spent["count"]).sum()) <= budget
    assert 0 < served["count"].sum() < full.prompts and meta["not_asked_budget"] == full.prompts - served.height
    assert meta["budget"].startswith(f"llm={NEW!r}: onboarding budget reached")
    # what it answered is its profile, partial, and its coverage is checked against that
    assert profile["partial"] and profile["target"] == profile["answered"] < profile["total"]
    coverage = {e.check_name: e for e in result.get_asset_check_evaluations()}["check_llm_responses_coverage"]
    assert coverage.passed
