"""The champion gate through the real ``router`` asset and a real MLflow sqlite registry: a version that adds a
cheaper LLM and routes better at every budget becomes champion although its AUDC over its own, wider cost range
is lower; a genuinely worse version stays challenger with the reason in its card; a re-run while the latest
version is that challenger registers nothing and names it. The default operating point is chosen on the
validation curve and travels with the version."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.profiling import graded_responses, llm_catalog, llm_partitions, llm_responses
from assets.router import router
from assets.routing import cluster_map, llm_error_features
from replay import ReplayServer

#: USD per million tokens: "cheap" (right on a third of everything) costs a fiftieth of the two it joins.
PRICES = {"math-pro": 4.0, "generalist": 5.0, "cheap": 0.1}
ALL_SPLITS = {"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}}


def _write_catalog(path, base_url: str, llms: list[str]) -> None:
    entries = ", ".join(f"{{name: {m}, usd_per_mtok_in: {PRICES[m]}, usd_per_mtok_out: {PRICES[m]}}}" for m in llms)
    path.write_text(f"defaults: {{base_url: '{base_url}'}}\nllms: [{entries}]\n")


@pytest.fixture(scope="module")
def versions(tmp_path_factory, mmlu_like_dir, data_home, build_graph, without_defs_state):
    """v1 on math-pro and generalist; v2 when cheap joins; v3 on a one-cluster (prompt-blind) map; then the
    router once more on v3's data. Each materialisation's metadata, and the registry's URI."""
    root = tmp_path_factory.mktemp("gate") / "data"
    with ReplayServer(mmlu_like_dir) as server, pytest.MonkeyPatch.context() as patch:
        home = data_home(root, server.base_url, ("math-pro", "generalist"))
        home.init_dagster_home()
        for key, value in home.env().items():
            patch.setenv(key, value)
        resources = home.resources()
        _write_catalog(home.catalog, server.base_url, ["math-pro", "generalist"])
        with home.instance() as instance:
            first = build_graph(instance, resources, mmlu_like_dir, home.catalog, ["math-pro", "generalist"])

            def run(assets, partition=None, ops=None):
                with without_defs_state():
                    result = dg.materialize(
                        assets,
                        partition_key=partition,
                        resources=resources,
                        instance=instance,
                        run_config={"ops": ops or {}},
                    )
                assert result.success
                return result

            def router_metadata():
                return {
                    k: v.value for k, v in run([router]).asset_materializations_for_node("router")[0].metadata.items()
                }

            _write_catalog(home.catalog, server.base_url, ["math-pro", "generalist", "cheap"])
            run([llm_catalog], ops={"llm_catalog": {"config": {"path": str(home.catalog)}}})
            instance.add_dynamic_partitions(llm_partitions.name, ["cheap"])
            run([llm_responses, graded_responses], "cheap", ALL_SPLITS)
            run([llm_error_features], "cheap")
            second = router_metadata()
            run([cluster_map], ops={"cluster_map": {"config": {"kind": "kmeans", "n_clusters": 1}}})
            for model in PRICES:
                run([llm_error_features], model)
            third = router_metadata()
            again = router_metadata()
    return {"v1": first["router"], "v2": second, "v3": third, "again": again, "uri": home.tracking_uri}


@pytest.fixture
def client(versions):
    import mlflow

    from serving import registry

    registry.configure(versions["uri"])
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def test_a_version_adding_a_cheaper_llm_that_routes_better_becomes_champion(versions, client):
    v1, v2 = versions["v1"], versions["v2"]
    assert (v1["version"], v1["alias"]) == ("1", "champion")
    assert v2["pool"] == "cheap, generalist, math-pro" and v2["version"] == "2"
    # the precondition: over its own range (down to cheap's cost) its AUDC is below the champion's over v1's
    assert v2["audc"] < v2["gate_champion_audc"]
    assert v2["gate_champion"] == "v1" and v2["gate_audc"] >= v2["gate_champion_audc"] - 0.002
    assert v2["gate_worst_gap"] >= -0.002  # not worse at any budget both reach
    assert v2["alias"] == "champion" and v2["gate"].startswith("promoted: AUDC ")
    assert "vs champion v1's" in v2["gate"] and "per 1,000 queries, tolerance 0.002" in v2["gate"]
    version = client.get_model_version("uniroute", "2")
    assert version.tags["gate"] == v2["gate"] and f"**Champion gate**: {v2['gate']}" in version.description
    assert str(client.get_model_version_by_alias("uniroute", "previous-champion").version) == "1"


def test_a_worse_version_is_kept_as_challenger_with_the_reason_in_its_card(versions, client):
    v3 = versions["v3"]
    assert v3["version"] == "3" and v3["alias"] == "challenger" and v3["gate_champion"] == "v2"
    assert v3["gate_audc"] < v3["gate_champion_audc"] - 0.002
    assert v3["gate"].startswith(f"kept as challenger: AUDC {v3['gate_audc']:.4f} vs champion v2's ")
    version = client.get_model_version("uniroute", "3")
    assert version.tags["gate"] == v3["gate"] and v3["gate"] in version.description
    assert str(client.get_model_version_by_alias("uniroute", "champion").version) == "2"


def test_a_rerun_while_the_latest_version_is_a_challenger_registers_nothing(versions, client):
    again = versions["again"]
    assert [str(v.version) for v in client.search_model_versions("name='uniroute'")] == ["3", "2", "1"]
    assert again["version"] == "3" and again["alias"] == "challenger"
    assert again["status"].startswith("unchanged: ") and "equal v3's (challenger)" in again["status"]
    assert again["gate"].startswith("not run: unchanged")


def test_the_default_operating_point_is_chosen_on_validation_and_served(versions, client):
    import mlflow

    v2 = versions["v2"]
    assert v2["default_rule"].startswith("auto: the cheapest point of the pool's cross-fitted validation deferral")
    weight = v2["default_cost_weight"]
    version = client.get_model_version("uniroute", "2")
    assert (
        version.tags["default_cost_weight"] == repr(weight)
        and version.tags["default_operating_point"] == (v2["default_rule"])
    )
    assert f"Default operating point: cost_weight={weight:g} (auto: " in version.description
    served = mlflow.pyfunc.load_model("models:/uniroute/2").unwrap_python_model()
    assert served.default_cost_weight == weight > 0  # not 0: not every prompt to the priciest accurate LLM
