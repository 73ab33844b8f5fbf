"""The registry's side of a version: aliases (champion, previous-champion, challenger), metrics that cannot be
logged, the model card, and a registry that keeps working after its data home is copied or moved."""

from __future__ import annotations

import math
import re
import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from serving import registry


@pytest.fixture
def uri(tmp_path):
    """A fresh sqlite registry in ``tmp_path/home`` (its artifacts beside it), MLflow pointed at it."""
    import mlflow

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    registry.configure(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def test_champion_moves_and_previous_champion_keeps_the_one_it_left(uri, tmp_path, register_router):
    import mlflow

    home = tmp_path / "home"
    v1 = register_router(home, ["cheap", "generalist"])
    experiment = registry.ensure_experiment("uniroute", home / "artifacts")
    v2, v3 = (registry.register_router(home / "router-2", "uniroute", experiment, {}, {}, {}, {}, ["hi"]) for _ in "ab")
    client = mlflow.MlflowClient()

    def aliases():
        return {a: str(v) for a, v in client.get_registered_model("uniroute").aliases.items()}

    assert registry.promote("uniroute", v1, better=True) == "champion" and aliases() == {"champion": "1"}
    assert registry.promote("uniroute", v2, better=True) == "champion"
    assert aliases() == {"champion": "2", "previous-champion": "1"}
    assert registry.promote("uniroute", v3, better=False) == "challenger"
    assert aliases() == {"champion": "2", "previous-champion": "1", "challenger": "3"}
    assert registry.promote("uniroute", v2, better=True) == "champion"  # re-promoting the champion moves nothing
    assert aliases()["previous-champion"] == "1"


def test_an_infinite_metric_is_absent_with_a_tag_saying_why(uri, tmp_path, register_router):
    import mlflow

    register_router(tmp_path / "home", ["cheap", "generalist"])
    version = registry.register_router(
        tmp_path / "home" / "router-2",
        "uniroute",
        registry.ensure_experiment("uniroute", tmp_path / "home" / "artifacts"),
        {},
        {"test_audc": 0.61, "test_qnc_fraction_of_best_cost": math.inf},
        {},
        {},
        ["hi"],
        absent_reasons={"test_qnc_fraction_of_best_cost": "no budget reaches the best LLM"},
    )
    client = mlflow.MlflowClient()
    run = client.get_run(client.get_model_version("uniroute", version).run_id)
    assert run.data.metrics == {"test_audc": 0.61}  # not 1.8e308
    tag = "metric_absent.test_qnc_fraction_of_best_cost"
    assert run.data.tags[tag] == "no budget reaches the best LLM"
    assert client.get_model_version("uniroute", version).tags[tag] == "no budget reaches the best LLM"


def test_registering_prints_no_notes_with_nothing_muted(uri, tmp_path, register_router, capfd):
    """Registration goes through MlflowClient: no "Successfully registered model" or "Created version" note on
    the terminal (MLflow's fluent register_model prints them whatever the log level), the first version and the
    next alike; the run is finished and the version names its logged model."""
    import mlflow

    capfd.readouterr()
    versions = [register_router(tmp_path / "home", ["cheap", "generalist"]) for _ in "ab"]
    out, err = capfd.readouterr()
    assert not re.search(r"registered model|created version", out + err, re.IGNORECASE), out + err
    client = mlflow.MlflowClient()
    assert versions == ["1", "2"] and client.get_registered_model("uniroute").description == registry.MODEL_DESCRIPTION
    version = client.get_model_version("uniroute", "2")
    assert client.get_run(version.run_id).info.status == "FINISHED"
    assert version.source.startswith("models:/m-") and version.tags["run_id"] == version.run_id


def test_the_signature_types_per_llm_outputs_as_maps_and_they_route(uri, tmp_path, register_router):
    import mlflow

    version = register_router(tmp_path / "home", ["cheap", "generalist"])
    signature = mlflow.models.get_model_info(f"models:/uniroute/{version}").signature
    assert {c["name"]: c for c in signature.outputs.to_dict()}["cost"] == {
        "type": "map",
        "values": {"type": "double"},
        "name": "cost",
        "required": True,
    }
    out = mlflow.pyfunc.load_model(f"models:/uniroute/{version}").predict(pd.DataFrame({"prompt": ["2 + 2?"]}))
    assert set(out["cost"].iloc[0]) == {"cheap", "generalist"}


def test_a_copied_then_moved_registry_loads_from_its_own_folder(uri, tmp_path, register_router):
    """Copy the data home (the original still there: the copy must not read or write the original's artifacts),
    then delete the original: ``models:/uniroute@champion`` loads from the copy."""
    import mlflow

    home, copy = tmp_path / "home", tmp_path / "elsewhere" / "home"
    registry.promote("uniroute", register_router(home, ["cheap", "generalist"]), better=True)
    shutil.copytree(home, copy)
    registry.configure(f"sqlite:///{copy / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("uniroute")
    assert experiment.artifact_location == (copy / "artifacts").as_uri()
    client = mlflow.MlflowClient()
    assert client.get_model_version_download_uri("uniroute", "1").startswith((copy / "artifacts").as_uri() + "/")
    assert registry.follow_moved_artifacts(copy / "mlflow.db") == 0  # once re-rooted, nothing more to do

    shutil.rmtree(home)
    mlflow.set_tracking_uri(None)
    registry.configure(f"sqlite:///{copy / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/uniroute@champion")
    out = model.predict(pd.DataFrame({"prompt": ["Compute the integral of 3x from 0 to 5."]}))
    assert out["llm"].iloc[0] in {"cheap", "generalist"}
    assert not home.exists()


def test_a_registry_that_did_not_move_is_left_alone(uri, tmp_path):
    import mlflow

    home = tmp_path / "home"
    registry.ensure_experiment("uniroute", home / "artifacts")
    (home / "artifacts").mkdir()
    assert registry.follow_moved_artifacts(home / "mlflow.db") == 0
    assert mlflow.get_experiment_by_name("uniroute").tags[registry.ARTIFACT_ROOT_TAG] == "artifacts"


def _card(**changes) -> registry.ModelCard:
    fields = {
        "pool": [
            registry.PoolEntry("big", 0.002, 0.8, 1.0, 0.79, 0.25),
            registry.PoolEntry("small", 0.0001, 0.5, 0.97, 0.52, 0.75),
        ],
        "test_prompts": 3091,
        "audc": 0.65126,
        "zero_audc": 0.6241,
        "qnc": math.inf,
        "zero_qnc": 1.0,
        "best_llm": "big",
        "cluster_map_kind": "learned",
        "n_clusters": 16,
        "cluster_map_version": "abc123def456",
        "embedder_id": "minilm-onnx-int8",
        "dataset": "mmlu_pro (1,032 validation, 3,091 test prompts)",
        "default_cost_weight": 0.0,
        "unseen_llms": ["big"],
    }
    return registry.ModelCard(**{**fields, **changes})


def test_the_model_card_says_what_the_version_is_and_how_to_call_it():
    card = _card().markdown("uniroute", "7", "sqlite:////data/mlflow/mlflow.db")
    lines = card.splitlines()
    assert lines.index("| small | $0.1 | 0.500 | 97% | 0.520 | 75% |") < lines.index(
        "| big | $2.00 | 0.800 | 100% | 0.790 | 25% |"
    )  # cheapest first, in dollars per 1,000 queries
    assert "| UniRoute (this version) | 0.6513 | never |" in lines
    assert "| ZeroRouter (prompt-blind mix of single LLMs) | 0.6241 | 1.000 |" in lines
    assert "on 3,091 test prompts" in card and "`big`" in card
    assert "- cluster map: learned, K=16, version `abc123def456`" in lines
    assert "- embedder: `minilm-onnx-int8`" in lines and "- dataset: mmlu_pro (1,032 validation" in card
    assert 'router = mlflow.pyfunc.load_model("models:/uniroute/7")  # or "models:/uniroute@champion"' in lines
    assert '    extra_body={"max_cost_per_query": 0.00045},  # or cost_weight, min_accuracy, candidates' in lines


def test_the_model_card_prices_per_1000_queries_says_what_was_left_out_and_why_and_no_absolute_path():
    tiny = [registry.PoolEntry("tiny", 1.2e-7, 0.4, 1.0, 0.41, 0.5, "catalog price x estimated tokens")]
    card = _card(
        pool=[*_card().pool, *tiny],
        left_out={"last": "check_llm_responses_coverage failed: coverage 90% < 98% (54 of 60 validation prompts)"},
        gate="promoted: AUDC 0.6132 vs champion v1's 0.6050 over $0.10-$2.00 per 1,000 queries, tolerance 0.002",
        default_operating_point="auto: the cheapest point ... within 0.005 of its best accuracy (0.8000)",
        default_cost_weight=12.5,
    ).markdown("uniroute", "7", "sqlite:////home/someone/data/mlflow/mlflow.db")
    lines = card.splitlines()
    assert "| tiny | $0.00012 | 0.400 | 100% | 0.410 | 50% | catalog price x estimated tokens |" in lines
    assert "| big | $2.00 | 0.800 | 100% | 0.790 | 25% | - |" in lines  # the cost basis column, when any says one
    assert "e-0" not in card  # no scientific notation anywhere (1.2e-07 USD per query is $0.00012 per 1,000)
    assert "- `last`: check_llm_responses_coverage failed: coverage 90% < 98% (54 of 60 validation prompts)" in lines
    assert "**Champion gate**: promoted: AUDC 0.6132 vs champion v1's 0.6050 over $0.10-$2.00" in card
    assert "Default operating point: cost_weight=12.5 (auto: the cheapest point" in card
    assert "/home/someone" not in card
    assert "`export MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db`" in card and "from the data home" in card
    served = _card().markdown("uniroute", "7", "https://user:secret@mlflow.example")
    assert "secret" not in served and "MLFLOW_TRACKING_URI=<your tracking server's URI>" in served


def test_an_identical_version_is_found_among_all_versions_the_champion_first(uri, tmp_path, register_router):
    import mlflow

    home = tmp_path / "home"
    v1 = register_router(home, ["cheap", "generalist"])
    experiment = registry.ensure_experiment("uniroute", home / "artifacts")
    v2, v3 = (registry.register_router(home / "router-2", "uniroute", experiment, {}, {}, {}, {}, ["hi"]) for _ in "ab")
    client = mlflow.MlflowClient()
    for version, pool in ((v1, "a"), (v2, "b"), (v3, "b")):
        client.set_model_version_tag("uniroute", version, "pool", pool)
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v3, better=False)
    assert str(registry.identical_version("uniroute", {"pool": "a"}, ["pool"]).version) == v1
    same = registry.identical_version("uniroute", {"pool": "b"}, ["pool"])  # the latest of v2 and v3
    assert str(same.version) == v3 and same.aliases == ["challenger"]
    assert registry.identical_version("uniroute", {"pool": "c"}, ["pool"]) is None


def test_names_and_links():
    assert registry.run_name("abc123def456", 15, date(2026, 12, 6)) == "router-abc123def456-15llms-2026-12-06"
    assert registry.version_url("uniroute", "3") == "http://127.0.0.1:5000/#/models/uniroute/versions/3"
    assert registry.version_url("my router", "1", "https://mlflow.example/") == (
        "https://mlflow.example/#/models/my%20router/versions/1"
    )
    assert registry.sqlite_path("sqlite:////abs/mlflow.db").as_posix() == "/abs/mlflow.db"
    assert registry.sqlite_path("postgresql://host/db") is None


def test_a_static_embedder_ships_with_the_version_and_a_different_one_is_refused(
    uri, tmp_path, mmlu_like_dir, tiny_model, static_cache
):
    import json

    import mlflow

    from router_core import Embedder

    from .conftest import register_fixture_router

    cache = tmp_path / "static-cache"
    shutil.copytree(static_cache, cache)
    embedder = Embedder(str(tiny_model), backend="static", cache_dir=cache)
    version = register_fixture_router(tmp_path / "home", mmlu_like_dir, ["cheap", "math-pro"], None, embedder)
    shutil.rmtree(cache)  # the version must not need the cache it was registered from
    local = mlflow.artifacts.download_artifacts(f"models:/uniroute/{version}", dst_path=str(tmp_path / "copy"))
    model = mlflow.pyfunc.load_model(local)
    routed = model.predict(pd.DataFrame({"prompt": ["What is the derivative of x^2?"]}))
    assert routed["llm"][0] in {"cheap", "math-pro"} and not cache.exists()  # nothing distilled again

    meta_path = next(Path(local).rglob("uniroute.json"))
    meta = json.loads(meta_path.read_text())
    assert meta["embedder_id"] == embedder.embedder_id and meta["backend"] == "static"
    meta_path.write_text(json.dumps({**meta, "embedder_id": "another-embedder"}))
    with pytest.raises(ValueError, match="embedder_id") as refused:  # the model code's own InvalidRoutingInput
        mlflow.pyfunc.load_model(local)
    assert type(refused.value).__name__ == "InvalidRoutingInput" and "another-embedder" in str(refused.value)
