"""The router asset explains itself (a per-LLM table, rounded headline numbers, a link to the MLflow version,
labelled plots), registers versions with a model card, named metrics and a map-typed signature, and registers
nothing when the champion already is what it would build. The module works on one copy of the run's
materialised graph."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import dagster as dg
import pytest

from assets.router import _left_out, _pool_table, router
from serving import registry

LLMS = ["cheap", "math-pro", "generalist"]  # the run's pipeline snapshot (conftest.SNAPSHOT_LLMS)


@pytest.fixture(scope="module")
def materialised(tmp_path_factory, pipeline_snapshot):
    """A copy of the run's materialised graph (three fixture LLMs), then the router once more on the same data: both
    router materialisations' metadata, and the registry's URI."""
    import mlflow

    home = pipeline_snapshot.copy(tmp_path_factory.mktemp("router_metadata") / "data")
    with pytest.MonkeyPatch.context() as patch, home.instance() as instance:
        for key, value in home.env().items():
            patch.setenv(key, value)
        again = dg.materialize([router], resources=home.resources(), instance=instance)
        assert again.success
        records = instance.fetch_materializations(dg.AssetKey("router"), limit=2, ascending=True).records
        first, second = (r.event_log_entry.asset_materialization.metadata for r in records)
    registry.configure(home.tracking_uri)
    yield {"first": first, "second": second, "uri": home.tracking_uri}
    mlflow.set_tracking_uri(None)


def test_unchanged_data_registers_no_new_version(materialised):
    import mlflow

    client = mlflow.MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name='uniroute'")] == ["1"]
    first, second = materialised["first"], materialised["second"]
    assert first["version"].value == "1" and first["status"].value.startswith("registered v1")
    assert second["status"].value.startswith("unchanged") and second["version"].value == "1"
    assert second["alias"].value == "champion"


def test_the_asset_page_explains_the_version(materialised):
    meta = materialised["first"]
    assert meta["pool"].value == "cheap, generalist, math-pro"  # readable text, not a JSON list
    assert isinstance(meta["mlflow_version"], dg.UrlMetadataValue)
    assert meta["mlflow_version"].value == "http://127.0.0.1:5000/#/models/uniroute/versions/1"
    table = meta["llms"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == [
        "LLM",
        "in pool",
        "USD per 1k queries",
        "validation accuracy",
        "validation coverage (%)",
        "test accuracy",
        "test prompts routed (%)",
        "data checks",
        "profile",
        "onboarding USD",
    ]
    rows = {r.data["LLM"]: r.data for r in table.records}
    assert set(rows) == set(LLMS) and all(r["data checks"] == "passed" for r in rows.values())
    # issue 26: each LLM's profile completeness and what its answers (every split profiled) cost
    assert {r["profile"] for r in rows.values()} == {"12 of 12"} and meta["profile"].value == "full"
    assert all(r["onboarding USD"] > 0 for r in rows.values())
    assert all(float(f"{r['USD per 1k queries']:.3g}") == r["USD per 1k queries"] > 0 for r in rows.values())
    assert rows["generalist"]["validation accuracy"] == 1.0 and rows["math-pro"]["validation coverage (%)"] == 100.0
    assert sum(r["test prompts routed (%)"] for r in rows.values()) == pytest.approx(100, abs=0.2)
    for key in ("audc", "zero_audc", "audc_gain_vs_zero", "default_test_accuracy"):
        value = meta[key].value
        assert isinstance(value, float) and round(value, 4) == value, (key, value)  # no 0.6512535080723294
    usd = meta["default_test_usd_per_1k"].value
    assert float(f"{usd:.3g}") == usd
    # keys short enough for the UI to draw beside their values; the gate's numbers under honest names
    assert max(len(k) for k in meta) <= 24, max(meta, key=len)
    assert "champion_audc_same_test_set" not in meta
    assert (
        meta["gate"].value == "promoted: the first version (no champion yet)" and meta["gate_champion"].value == "none"
    )
    assert meta["default_rule"].value.startswith("auto: the cheapest point of the pool's cross-fitted validation")
    assert meta["left_out"].value == "none"
    assert meta["test_prompts"].value > 0 and meta["cluster_map"].value.startswith("kmeans, K=3, version ")
    assert meta["dataset"].value.endswith(f"{meta['test_prompts'].value} test prompts)")
    assert "![deferral_curve.png](data:image/png;base64," in meta["deferral_curve"].value
    for plot in ("deferral_curve", "psi_heatmap"):  # sharp on a high-density screen
        encoded = meta[plot].value.split("base64,", 1)[1].rstrip(")")
        assert min(_dpi(base64.b64decode(encoded))) >= 149.9, plot


def _dpi(png: bytes) -> tuple[float, float]:
    from PIL import Image

    return Image.open(io.BytesIO(png)).info["dpi"]


def test_left_out_llms_are_rows_that_say_why():
    import polars as pl

    entry = registry.PoolEntry("a", 0.00012345, 0.5, 0.99, 0.6, 1.0)
    checks = pl.DataFrame(
        {"model": ["b"], "check_name": ["check_llm_responses_coverage"], "message": ["coverage 90% < 98% (9 of 10)"]}
    )
    left_out = _left_out(checks, ["c"])
    assert left_out == {
        "b": "check_llm_responses_coverage failed: coverage 90% < 98% (9 of 10)",
        "c": "checks passed, but no cost on validation (prices or per-query USD)",
    }
    table = _pool_table([entry], left_out)
    rows = [r.data for r in table.records]
    assert rows[0]["USD per 1k queries"] == 0.123 and rows[0]["validation coverage (%)"] == 99.0
    assert rows[1]["LLM"] == "b" and rows[1]["in pool"] is False and rows[1]["data checks"] == left_out["b"]
    assert rows[1]["USD per 1k queries"] is None


def test_the_version_has_a_model_card_named_metrics_and_a_map_signature(materialised, tmp_path):
    import mlflow

    client = mlflow.MlflowClient()
    version = client.get_model_version("uniroute", "1")
    card = version.description
    for text in (
        "### Pool: 3 LLMs",
        "| cheap | $",
        "UniRoute (this version)",
        "ZeroRouter",
        f"on {materialised['first']['test_prompts'].value} test prompts",
        "cluster map: kmeans, K=3, version",
        f"embedder: `{version.tags['embedder_id']}`",
        "dataset: ",
        'mlflow.pyfunc.load_model("models:/uniroute/1")',
        "uniroute serve --catalog llms.yaml --model-uri models:/uniroute@champion",
        "client.chat.completions.create(",
    ):
        assert text in card, text
    assert "@champion" in client.get_registered_model("uniroute").description
    assert "| LLM | $ per 1,000 queries |" in card and "MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db" in card
    assert registry.sqlite_path(materialised["uri"]).parent.parent.as_posix() not in card  # no absolute path
    run = client.get_run(version.run_id)
    assert run.info.run_name == registry.run_name(version.tags["cluster_map_version"], 3)
    metrics = run.data.metrics
    assert {
        "test_audc",
        "test_zero_router_audc",
        "test_audc_gain_vs_zero_router",
        "test_mean_cost_usd_per_query_at_default_cost_weight",
        "validation_cheapest_llm_cost_usd_per_query",
    } <= set(metrics)
    assert all(math.isfinite(v) and abs(v) < 1e300 for v in metrics.values())  # inf is never logged as 1.8e308
    qnc = "test_qnc_fraction_of_best_cost"
    assert (qnc in metrics) != (f"metric_absent.{qnc}" in run.data.tags)
    figure = client.download_artifacts(version.run_id, "deferral_curve.png", str(tmp_path))
    assert min(_dpi(Path(figure).read_bytes())) >= 149.9
    outputs = mlflow.models.get_model_info("models:/uniroute/1").signature.outputs.to_dict()
    assert {c["name"]: c["type"] for c in outputs} == {
        "llm": "string",
        "cost_weight": "double",
        "predicted_error": "map",
        "cost": "map",
    }
