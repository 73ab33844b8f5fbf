"""The whole graph on the fixture: profile, cluster map, features, router registered in a real MLflow sqlite
registry; a new LLM yields a new version without refitting the map; models:/uniroute@champion routes text, also from
a copied data home."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.profiling import graded_responses, llm_catalog, llm_partitions, llm_responses
from assets.router import router
from assets.routing import llm_error_features
from replay import ReplayServer


def _meta(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_router_versions_in_the_registry(materialised_pipeline, mmlu_like_dir):
    import mlflow

    home = materialised_pipeline
    uri = home.tracking_uri
    resources = home.resources()
    all_splits = {"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}}
    with ReplayServer(mmlu_like_dir) as server, home.instance() as instance:

        def profile(model):
            instance.add_dynamic_partitions(llm_partitions.name, [model])
            for asset in (llm_responses, graded_responses):
                config = {"ops": all_splits} if asset is llm_responses else None
                assert dg.materialize(
                    [asset], partition_key=model, resources=resources, instance=instance, run_config=config
                ).success

        def sync_catalog(llms):
            # the snapshot's LLMs keep the endpoint that answered them (another URL would make their answers stale);
            # history-pro is asked at this test's replay endpoint
            catalog = home.write_catalog(llms, {"history-pro": server.base_url})
            assert dg.materialize(
                [llm_catalog],
                resources=resources,
                instance=instance,
                run_config={"ops": {"llm_catalog": {"config": {"path": str(catalog)}}}},
            ).success

        # the snapshot: the whole graph on cheap, math-pro and generalist
        map_version = home.latest_metadata(instance, "cluster_map")["version"]
        v1 = home.latest_metadata(instance, "router")
        assert v1["pool"] == "cheap, generalist, math-pro" and v1["version"] == "1" and v1["alias"] == "champion"
        assert v1["audc"] >= v1["zero_audc"] - 1e-9  # topic specialists: routing can only help here

        # Onboard a new LLM: catalog change, profile, features; no cluster-map refit; router v2.
        sync_catalog(["cheap", "math-pro", "generalist"])
        profile("history-pro")
        assert dg.materialize(
            [llm_error_features], partition_key="history-pro", resources=resources, instance=instance
        ).success
        v2 = _meta(dg.materialize([router], resources=resources, instance=instance), "router")
        if v2["alias"] == "champion":  # champion moved from v1: previous-champion keeps it
            aliases = mlflow.MlflowClient(uri, uri).get_registered_model("uniroute").aliases
            assert str(aliases["previous-champion"]) == "1"
        # Retire an LLM from the catalog: the next version leaves it out, though its features remain.
        sync_catalog(["math-pro", "generalist"])
        v3 = _meta(dg.materialize([router], resources=resources, instance=instance), "router")
    assert v3["pool"] == "generalist, history-pro, math-pro"  # shown as text
    assert v2["version"] == "2" and v2["cluster_map_version"] == map_version == v1["cluster_map_version"]
    # the gate: v2 against v1 on the same test prompts over the cost range both reach, within 0.002 AUDC
    promoted = v2["gate_audc"] >= v2["gate_champion_audc"] - 0.002
    assert "history-pro" in v2["pool"] and v2["alias"] == ("champion" if promoted else "challenger")

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/uniroute/{v2['version']}")
    routed = model.predict(
        pd.DataFrame({"prompt": ["Compute the integral of 3x from 0 to 5."]}), params={"cost_weight": 0.0}
    )
    assert routed["llm"].iloc[0] in v2["pool"]
    version = mlflow.MlflowClient().get_model_version("uniroute", v2["version"])
    assert version.tags["cluster_map_version"] == map_version and "history-pro" in version.tags["pool"]


def test_a_copied_data_home_routes_from_its_own_files(pipeline_snapshot, tmp_path):
    """What keeps the tests' copies of the run's pipeline apart: a copy of a copy, the first copy deleted, still
    routes with models:/uniroute@champion, and every artifact location it stores lies inside it."""
    import mlflow

    import warehouse as wh
    from serving import registry

    first = pipeline_snapshot.copy(tmp_path / "first")
    home = first.copy(tmp_path / "second")
    shutil.rmtree(first.root)
    with contextlib.closing(sqlite3.connect(registry.sqlite_path(home.tracking_uri))) as con:
        stored = con.execute(
            "SELECT artifact_location FROM experiments WHERE name IN ('uniroute', 'uniroute-alias-moves') "
            "UNION ALL SELECT artifact_uri FROM runs UNION ALL SELECT artifact_location FROM logged_models "
            "UNION ALL SELECT storage_location FROM model_versions"
        ).fetchall()
    # two experiments, the router's run and the run recording champion's move, its logged model and model version
    assert len(stored) == 6 and all(uri.startswith(home.root.as_uri() + "/") for (uri,) in stored), stored
    with wh.connect_read_only(home.warehouse) as con:
        assert Path(wh.latest_cluster_map(con)["path"]).is_relative_to(home.root)
    registry.configure(home.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/uniroute@champion")
        routed = model.predict(pd.DataFrame({"prompt": ["Compute the integral of 3x from 0 to 5."]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert routed["llm"].iloc[0] in home.llms
