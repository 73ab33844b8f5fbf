"""The onboarding sensor on catalog changes, evaluated with build_sensor_context against a real instance; it reads
the catalog of the warehouse resource the assets use."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from assets.resources import WarehouseResource
from pipelines.sensors import llm_onboarding_sensor

CATALOG = """
defaults: {{base_url: "http://127.0.0.1:9/v1", usd_per_mtok_in: 1, usd_per_mtok_out: 1}}
llms:
{entries}
"""


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    path = tmp_path / "llms.yaml"
    monkeypatch.setenv("UNIROUTE_CATALOG", str(path))

    def write(*entries: str) -> None:
        path.write_text(CATALOG.format(entries="\n".join(f"  - {e}" for e in entries)))

    return write


def _tick(instance, cursor=None, warehouse=None):
    resources = {"warehouse": warehouse or WarehouseResource()}
    result = llm_onboarding_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    if isinstance(result, dg.SkipReason):
        return result, cursor
    for request in result.dynamic_partitions_requests:  # what the daemon does with them
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result, result.cursor


def test_new_llms_get_partitions_and_runs_and_nothing_twice(catalog):
    with dg.DagsterInstance.ephemeral() as instance:
        catalog("{name: a}", "{name: b}")
        instance.add_dynamic_partitions("llm", ["a"])  # e.g. by a catalog sync: still new to the sensor
        first, cursor = _tick(instance)
        assert sorted((r.partition_key, r.tags["uniroute/onboarding"]) for r in first.run_requests) == [
            ("a", "new"),
            ("b", "new"),
        ]
        assert sorted(instance.get_dynamic_partitions("llm")) == ["a", "b"]
        idle, cursor = _tick(instance, cursor)
        assert isinstance(idle, dg.SkipReason)

        catalog("{name: a}", "{name: b}", "{name: c}", "{name: d, active: false}")
        second, cursor = _tick(instance, cursor)
        assert [r.partition_key for r in second.run_requests] == ["c"]
        assert second.run_requests[0].tags["uniroute/onboarding"] == "new"

        catalog("{name: a, model_id: a-v2}", "{name: b}", "{name: c}")  # same name, new model behind it
        third, cursor = _tick(instance, cursor)
        assert [(r.partition_key, r.tags["uniroute/onboarding"]) for r in third.run_requests] == [("a", "changed")]
        assert set(json.loads(cursor)) == {"a", "b", "c"}


def test_invalid_catalog_launches_nothing(catalog):
    with dg.DagsterInstance.ephemeral() as instance:
        catalog("{name: a, usd_per_mtok_in: -1}")
        result, _ = _tick(instance)
        assert isinstance(result, dg.SkipReason) and "usd_per_mtok_in" in result.skip_message
        assert instance.get_dynamic_partitions("llm") == []


def test_a_configured_warehouse_resource_moves_the_sensor_with_the_assets(catalog, tmp_path):
    # $UNIROUTE_CATALOG names one file (the fixture's); the deployment configures another on the resource
    catalog("{name: from-environment}")
    configured = tmp_path / "deployed.yaml"
    configured.write_text(CATALOG.format(entries="  - {name: from-resource}"))
    warehouse = WarehouseResource(path=str(tmp_path / "deployed.duckdb"), catalog_path=str(configured))
    with dg.DagsterInstance.ephemeral() as instance:
        result, _ = _tick(instance, warehouse=warehouse)
    [request] = result.run_requests
    assert request.partition_key == "from-resource"
    # the run it launches syncs the same file into the same warehouse
    assert request.run_config["ops"]["llm_catalog"]["config"]["path"] == str(configured)


def test_the_sensors_run_request_profiles_the_new_llm(catalog, tmp_path, monkeypatch, mmlu_like_dir):
    import warehouse as wh
    from assets.profiling import prompt_set
    from pipelines.definitions import defs
    from replay import ReplayServer

    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    with dg.DagsterInstance.ephemeral() as instance, ReplayServer(mmlu_like_dir) as server:
        catalog(f"{{name: cheap, base_url: '{server.base_url}'}}")
        prompts = {"ops": {"prompt_set": {"config": {"path": str(mmlu_like_dir)}}}}
        assert dg.materialize([prompt_set], instance=instance, resources=defs.resources, run_config=prompts).success
        result, _ = _tick(instance)
        request = result.run_requests[0]
        job = defs.resolve_job_def("profile_llm")
        run = job.execute_in_process(
            partition_key=request.partition_key, run_config=request.run_config, instance=instance
        )
        assert run.success
    with wh.connect(tmp_path / "w.duckdb") as con:
        assert wh.read_outcomes(con, ["cheap"], ["validation"]).height == 12
