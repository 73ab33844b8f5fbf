"""The whole graph on the fixture: profile, cluster map, features, router registered in a real MLflow sqlite
registry; a new LLM yields a new version without refitting the map; models:/uniroute@champion routes text."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from assets.profiling import graded_responses, llm_catalog, llm_partitions, llm_responses
from assets.resources import (
    ArtifactsResource,
    CollectorResource,
    EmbedderResource,
    MlflowResource,
    WarehouseResource,
)
from assets.router import router
from assets.routing import llm_error_features
from profiling.replay_server import ReplayServer


def _meta(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_router_versions_in_the_registry(instance, tmp_path, mmlu_like_dir, monkeypatch, build_graph):
    import mlflow

    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {
        "warehouse": WarehouseResource(),
        "collector": CollectorResource(max_attempts=3, timeout_s=5.0),
        "embedder": EmbedderResource(),
        "artifacts": ArtifactsResource(root=str(tmp_path / "artifacts")),
        "mlflow": MlflowResource(tracking_uri=uri),
    }
    catalog = tmp_path / "llms.yaml"
    all_splits = {"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}}
    with ReplayServer(mmlu_like_dir) as server:

        def write_catalog(names):
            entries = ", ".join(f"{{name: {n}}}" for n in names)
            catalog.write_text(
                f"defaults: {{base_url: '{server.base_url}', usd_per_mtok_in: 1, usd_per_mtok_out: 1}}\n"
                f"llms: [{entries}]\n"
            )

        def profile(model):
            instance.add_dynamic_partitions(llm_partitions.name, [model])
            for asset in (llm_responses, graded_responses):
                config = {"ops": all_splits} if asset is llm_responses else None
                assert dg.materialize(
                    [asset], partition_key=model, resources=resources, instance=instance, run_config=config
                ).success

        write_catalog(["cheap", "math-pro", "generalist"])
        built = build_graph(instance, resources, mmlu_like_dir, catalog, ["cheap", "math-pro", "generalist"])
        map_version, v1 = built["cluster_map"]["version"], built["router"]
        assert v1["version"] == "1" and v1["alias"] == "champion"
        assert v1["audc"] >= v1["zero_audc"] - 1e-9  # topic specialists: routing can only help here

        # Onboard a new LLM: catalog change, profile, features; no cluster-map refit; router v2.
        write_catalog(["cheap", "math-pro", "generalist", "history-pro"])
        assert dg.materialize(
            [llm_catalog],
            resources=resources,
            instance=instance,
            run_config={"ops": {"llm_catalog": {"config": {"path": str(catalog)}}}},
        ).success
        profile("history-pro")
        assert dg.materialize(
            [llm_error_features], partition_key="history-pro", resources=resources, instance=instance
        ).success
        v2 = _meta(dg.materialize([router], resources=resources, instance=instance), "router")
        if v2["alias"] == "champion":  # champion moved from v1: previous-champion keeps it
            aliases = mlflow.MlflowClient(uri, uri).get_registered_model("uniroute").aliases
            assert str(aliases["previous-champion"]) == "1"
        # Retire an LLM from the catalog: the next version leaves it out, though its features remain.
        write_catalog(["math-pro", "generalist", "history-pro"])
        assert dg.materialize(
            [llm_catalog],
            resources=resources,
            instance=instance,
            run_config={"ops": {"llm_catalog": {"config": {"path": str(catalog)}}}},
        ).success
        v3 = _meta(dg.materialize([router], resources=resources, instance=instance), "router")
    assert v3["pool"] == "generalist, history-pro, math-pro"  # shown as text
    assert v2["version"] == "2" and v2["cluster_map_version"] == map_version == v1["cluster_map_version"]
    assert "history-pro" in v2["pool"] and v2["alias"] == ("champion" if v2["audc"] >= v1["audc"] else "challenger")

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/uniroute/{v2['version']}")
    routed = model.predict(
        pd.DataFrame({"prompt": ["Compute the integral of 3x from 0 to 5."]}), params={"cost_weight": 0.0}
    )
    assert routed["llm"].iloc[0] in v2["pool"]
    version = mlflow.MlflowClient().get_model_version("uniroute", v2["version"])
    assert version.tags["cluster_map_version"] == map_version and "history-pro" in version.tags["pool"]
