"""online_evaluation and the per-LLM traffic check on a copy of the materialised pipeline (router v1 @champion in a real
MLflow sqlite registry): an LLM whose observed error on traffic exceeds its prediction in one cluster gets a WARN
naming it, the cluster and the counts; the others pass; the figures are in the metadata and in the version's run."""

from __future__ import annotations

import dagster as dg
import polars as pl

import warehouse as wh
from assets.outcomes import TRAFFIC_CHECK, llm_traffic_evaluation, online_evaluation
from tests.online_traffic import CLUSTER, DEGRADED, champion_shape, degraded_traffic


def _check(instance, resources, llm: str) -> dg.AssetCheckEvaluation:
    result = dg.materialize([llm_traffic_evaluation], partition_key=llm, resources=resources, instance=instance)
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == TRAFFIC_CHECK
    return evaluation


def test_an_llm_worse_on_traffic_than_predicted_warns_naming_the_cluster(materialised_pipeline):
    from mlflow import MlflowClient

    home = materialised_pipeline
    resources = home.resources()
    llms, k = champion_shape(home.tracking_uri)
    assert DEGRADED in llms and k > CLUSTER
    decisions, feedback = degraded_traffic(llms, k)
    with wh.connect(home.warehouse) as con:
        wh.insert_routing_decisions(con, decisions)
        wh.insert_traffic_feedback(con, feedback)

    with home.instance() as instance:
        result = dg.materialize([online_evaluation], resources=resources, instance=instance)
        assert result.success
        meta = {k: v.value for k, v in result.asset_materializations_for_node("online_evaluation")[0].metadata.items()}
        checks = {llm: _check(instance, resources, llm) for llm in llms}

    assert (meta["router_version"], meta["rated_requests"]) == ("1", len(decisions))
    assert meta["alarms"].startswith(f"{DEGRADED}, cluster {CLUSTER}: observed error 1.00 over 100 requests")
    assert f"| {DEGRADED} | {CLUSTER} | 100 |" in meta["by_cluster"] and "| llm | count |" in meta["by_llm"]
    for name in ("reliability", "quality_vs_cost", "drift_heatmap"):
        assert meta[name].startswith(f"![{name}.png](data:image/png;base64,")

    bad = checks.pop(DEGRADED)
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.WARN
    assert f"{DEGRADED}, cluster {CLUSTER}: observed error 1.00 over 100 requests vs predicted 0.25" in bad.description
    assert bad.metadata["alarming_clusters"].value == [CLUSTER] and bad.partition == DEGRADED
    for llm, check in checks.items():
        assert check.passed, (llm, check.description)
        assert check.description.startswith(f"{llm}: observed error on traffic within its prediction")

    run_id = MlflowClient().get_model_version("uniroute", "1").run_id
    logged = {a.path for a in MlflowClient().list_artifacts(run_id, "online_evaluation")}
    assert logged == {f"online_evaluation/{n}.png" for n in ("reliability", "quality_vs_cost", "drift_heatmap")}
    assert meta["mlflow_run_id"] == run_id


def test_without_a_champion_nothing_is_evaluated_and_every_llm_passes(instance, tmp_path):
    from assets.resources import MlflowResource, WarehouseResource

    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:  # an evaluation left from before: replaced by an empty one
        cells = {"llm": ["cheap"], "cluster": [0], "count": [50], "alarm": [True], "message": ["cheap, cluster 0"]}
        wh.replace_online_evaluation(con, "7", pl.DataFrame(cells))
    resources = {
        "warehouse": WarehouseResource(path=str(path)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    }
    result = dg.materialize([online_evaluation], resources=resources, instance=instance)
    meta = result.asset_materializations_for_node("online_evaluation")[0].metadata
    assert meta["router_version"].value == "none: no champion yet"
    instance.add_dynamic_partitions("llm", ["cheap"])
    check = _check(instance, resources, "cheap")
    assert check.passed and check.description == "cheap: no rated traffic in the latest online evaluation"
