"""Coverage drift on a materialised pipeline (router v1 @champion in a real MLflow registry, a real DuckDB file):
the traffic_coverage asset by real materialisations, the coverage sensor by real ticks (its cursor in the instance),
the run it requests executed as the daemon would, and what the nightly profiling schedule does next."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import polars as pl
import pytest

import warehouse as wh
from assets.coverage import traffic_coverage
from assets.resources import EmbedderResource
from pipelines.schedules import nightly_profiling_schedule
from pipelines.sensors import coverage_drift_sensor
from pipelines.ticks import sensor_run_tags, sensor_tick
from router_core import load_cluster_map

JUDGE = "generalist"
NOW = datetime.now(UTC).replace(microsecond=0)
#: Small thresholds for a small fixture (12 validation prompts); far prompts are left out of the decision here.
CONFIG = {"bound": 0.2, "far_bound": 1.0, "min_prompts": 30, "sample_size": 20, "judge": JUDGE}


@pytest.fixture
def home(materialised_pipeline):
    return materialised_pipeline


def _traffic(home, texts: list[str], sampled: bool, prefix: str) -> list[str]:
    """Decisions of router v1 for ``texts`` (their cluster weights through its map), and, when ``sampled``, the
    same requests stored as sampled traffic; returns their request ids."""
    model = EmbedderResource().embedder()
    with wh.connect(home.warehouse) as con:
        cmap = load_cluster_map(wh.latest_cluster_map(con)["path"])
        weights = [w.tolist() for w in cmap.transform(np.asarray(model.embed(texts)))]
        ids = [f"{prefix}{i:04d}" for i in range(len(texts))]
        at = [NOW - timedelta(minutes=i) for i in range(len(texts))]
        common = {"request_id": ids, "at": at, "router_version": "1", "embedder_id": model.embedder_id}
        decisions = pl.DataFrame({**common, "status": 200, "budget_kind": "none", "cluster_weights": weights})
        wh.insert_routing_decisions(con, decisions.with_columns(pl.col("status").cast(pl.Int32)))
        if sampled:
            messages = [json.dumps([{"role": "user", "content": t}]) for t in texts]
            samples = {**common, "prompt": texts, "messages": messages, "answer": "42", "cluster_weights": weights}
            wh.insert_traffic_samples(con, pl.DataFrame({**samples, "key_id": "k1", "chosen_llm": "cheap"}))
    return ids


def _math_prompts(n: int) -> list[str]:
    """New prompts of the fixture's math topic (its templates, other numbers)."""
    return [f"Compute the integral of {3 + i}x from 0 to {7 + 2 * i}." for i in range(n)]


def _coverage(home, instance, **config) -> dict:
    result = dg.materialize(
        [traffic_coverage],
        resources=home.resources(),
        instance=instance,
        run_config={"ops": {"traffic_coverage": {"config": {**CONFIG, **config}}}},
    )
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("traffic_coverage")[0].metadata.items()}


def _tick_and_run(home, instance) -> tuple[dg.SensorResult | dg.SkipReason, dict | None]:
    """One sensor tick as the daemon's; the run it requests executed with the request's config and tags."""
    from pipelines.definitions import defs

    result = sensor_tick(coverage_drift_sensor, instance, resources=home.resources())
    requests = result.run_requests if isinstance(result, dg.SensorResult) else []
    if not requests:
        return result, None
    [request] = requests
    run = defs.resolve_job_def("add_traffic_prompts").execute_in_process(
        run_config=request.run_config, instance=instance, tags=sensor_run_tags(coverage_drift_sensor, request)
    )
    assert run.success
    meta = run.asset_materializations_for_node("traffic_validation_prompts")[0].metadata
    return result, {k: v.value for k, v in meta.items()}


def _skip_message(result) -> str:
    return result.skip_message if isinstance(result, dg.SkipReason) else result.skip_reason.skip_message


def _traffic_prompts(home) -> pl.DataFrame:
    with wh.connect_read_only(home.warehouse) as con:
        return wh.read_prompts(con, dataset="traffic")


def test_traffic_like_the_validation_set_holds_and_adds_nothing(home):
    with wh.connect_read_only(home.warehouse) as con:
        texts = wh.read_prompts(con)["text"].to_list()  # every fixture prompt: the three topics as validation has
    _traffic(home, texts, sampled=True, prefix="like-")
    with home.instance() as instance:
        meta = _coverage(home, instance)
        result, added = _tick_and_run(home, instance)
    assert meta["drifted"] is False and meta["reason"].startswith("coverage holds"), meta["reason"]
    assert meta["n_traffic"] == len(texts) and meta["n_embedded"] == len(texts)
    assert meta["total_variation"] <= CONFIG["bound"] and meta["to_add"] == []
    assert "| cluster | validation_share | traffic_share |" in meta["clusters"]
    assert meta["cluster_shares"].startswith("![cluster_shares](data:image/png;base64,")
    assert added is None and "coverage holds" in _skip_message(result)
    assert _traffic_prompts(home).height == 0


def test_concentrated_traffic_drifts_and_the_sensor_adds_its_cluster_once(home):
    ids = _traffic(home, _math_prompts(60), sampled=True, prefix="math-")
    with wh.connect_read_only(home.warehouse) as con:
        weights = dict(zip(*wh.read_decision_weights(con, "1"), strict=True))
    [math_cluster] = {int(np.argmax(weights[i])) for i in ids}
    with home.instance() as instance:
        first = _coverage(home, instance)
        result, added = _tick_and_run(home, instance)
        again, nothing = _tick_and_run(home, instance)  # no new report: the cursor holds
        with wh.connect_read_only(home.warehouse) as con:
            pending = dict(wh.pending_counts(con).iter_rows())
        nightly = nightly_profiling_schedule(
            dg.build_schedule_context(instance=instance, resources={"warehouse": home.resources()["warehouse"]})
        )
        second = _coverage(home, instance)  # the grown validation set: closer, and the added are not proposed again
    assert first["drifted"] is True
    assert f"cluster {math_cluster} has " in first["reason"] and "total variation" in first["reason"]
    assert first["to_add_count"] == CONFIG["sample_size"] and set(first["to_add"]) <= set(ids)
    assert added["added"] == CONFIG["sample_size"] and added["already_added"] == 0 and added["judge"] == JUDGE
    assert result.run_requests[0].run_key.startswith("traffic_coverage:")
    assert nothing is None and "no coverage report since" in _skip_message(again)

    prompts = _traffic_prompts(home)
    assert sorted(prompts["prompt_id"]) == sorted(f"traffic/{i}" for i in first["to_add"])
    assert set(prompts["split"]) == {"validation"} and set(prompts["grader"]) == {"llm_judge"}
    options = json.loads(prompts["grader_options"][0])
    assert options["judge"] == JUDGE and "{reference}" not in options["rubric"]
    assert {int(np.argmax(weights[p.removeprefix("traffic/")])) for p in prompts["prompt_id"]} == {math_cluster}
    # profiling follows as for any new validation prompt: every active LLM has them pending, the nightly run asks
    assert all(pending[m] >= CONFIG["sample_size"] for m in home.llms)
    assert sorted(r.partition_key for r in nightly) == sorted(home.llms)

    assert second["total_variation"] < first["total_variation"]
    assert not set(second["to_add"]) & set(first["to_add"])


def test_adding_twice_adds_nothing_twice(home):
    _traffic(home, _math_prompts(60), sampled=True, prefix="math-")
    with home.instance() as instance:
        _coverage(home, instance)
        result, added = _tick_and_run(home, instance)
        # the same request run again (e.g. launched by hand): every prompt is there already
        from pipelines.definitions import defs

        [request] = result.run_requests
        rerun = defs.resolve_job_def("add_traffic_prompts").execute_in_process(
            run_config=request.run_config, instance=instance
        )
    meta = {
        k: v.value for k, v in rerun.asset_materializations_for_node("traffic_validation_prompts")[0].metadata.items()
    }
    assert added["added"] == CONFIG["sample_size"]
    assert (meta["added"], meta["already_added"]) == (0, CONFIG["sample_size"])
    assert _traffic_prompts(home).height == CONFIG["sample_size"]


def test_without_sampled_traffic_nothing_is_added(home):
    _traffic(home, _math_prompts(60), sampled=False, prefix="math-")
    with home.instance() as instance:
        meta = _coverage(home, instance)
        result, added = _tick_and_run(home, instance)
    assert meta["drifted"] is True and meta["n_embedded"] == 0 and meta["to_add"] == []
    assert added is None and "sampled traffic is opt-in" in _skip_message(result)
    assert _traffic_prompts(home).height == 0


def test_without_a_judge_nothing_is_added(home):
    _traffic(home, _math_prompts(60), sampled=True, prefix="math-")
    with home.instance() as instance:
        meta = _coverage(home, instance, judge="")
        result, added = _tick_and_run(home, instance)
    assert meta["drifted"] is True and meta["to_add_count"] == CONFIG["sample_size"]
    assert added is None and "traffic_coverage.config.judge is empty" in _skip_message(result)
    assert _traffic_prompts(home).height == 0


@pytest.mark.parametrize(("field", "value"), [("bound", 1.5), ("sample_size", -1), ("min_prompts", 0)])
def test_a_bad_setting_is_refused_naming_it(instance, tmp_path, field, value):
    from assets.resources import MlflowResource, WarehouseResource

    resources = {
        "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "embedder": EmbedderResource(),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    }
    result = dg.materialize(
        [traffic_coverage],
        resources=resources,
        instance=instance,
        run_config={"ops": {"traffic_coverage": {"config": {field: value}}}},
        raise_on_error=False,
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"traffic_coverage.config.{field}={value!r}: must be" in message
