"""The registered pyfunc, loaded from a real MLflow sqlite registry: routes text, meets budgets, refuses bad
input by name; and `mlflow models serve` answers /invocations over HTTP on 127.0.0.1."""

from __future__ import annotations

import re
import sys

import numpy as np
import pandas as pd
import pytest
import requests


@pytest.fixture(scope="module")
def champion(registry_uri):
    import mlflow

    return mlflow.pyfunc.load_model("models:/uniroute@champion")


def test_routes_text_with_each_candidates_error_and_cost(champion, prices):
    prompts = ["Compute the integral of 3x from 0 to 5.", "Which empire ruled Gaul in 300 AD?"]
    out = champion.predict(pd.DataFrame({"prompt": prompts}), params={"cost_weight": 0.0})
    assert list(out.columns) == ["llm", "cost_weight", "predicted_error", "cost"]
    assert out["llm"].iloc[0] in {"math-pro", "generalist"}  # right on math; cost_weight 0 ignores price
    assert set(out["predicted_error"].iloc[0]) == set(prices) and out["cost"].iloc[0]["cheap"] == 0.1
    cheap = champion.predict(pd.DataFrame({"prompt": prompts}), params={"cost_weight": 1e6})
    assert cheap["llm"].tolist() == ["cheap", "cheap"]
    only = champion.predict(pd.DataFrame({"prompt": prompts}), params={"candidates": ["generalist", "cheap"]})
    assert set(only["predicted_error"].iloc[0]) == {"generalist", "cheap"}


def test_the_version_ships_the_int8_export_its_vectors_came_from(champion, onnx_cache):
    from router_core import Embedder

    embedder = champion.unwrap_python_model().embedder
    assert embedder.backend == "onnx-int8" and embedder.onnx_path.is_file()
    assert onnx_cache not in embedder.onnx_path.parents  # read from the version's artifacts, not exported here
    local = Embedder(cache_dir=onnx_cache)
    assert embedder.embedder_id == local.embedder_id
    text = ["Compute the integral of 3x from 0 to 5."]
    assert np.array_equal(embedder.embed(text), local.embed(text))


def test_a_budget_resolves_to_the_operating_points_around_it(champion):
    prompts = pd.DataFrame({"prompt": [f"Solve {i}x + {i + 1} = 0 for x." for i in range(200)]})
    spend_little = champion.predict(prompts, params={"max_cost_per_query": 0.1})
    assert set(spend_little["llm"]) == {"cheap"}
    afford_all = champion.predict(prompts, params={"max_cost_per_query": 100.0})
    assert afford_all["cost_weight"].nunique() == 1  # the most accurate point: no mixing needed
    accurate = champion.predict(prompts, params={"min_accuracy": 0.9})
    assert (accurate["llm"] != "cheap").mean() > 0.5


def test_a_budget_resolves_on_the_curve_of_the_llms_actually_routed(champion, mmlu_like_dir):
    """Without cheap, the cheapest operating point is another LLM's: a budget must not be read off the whole
    pool's curve (where it would be met by routing to cheap, which this request excludes)."""
    model = champion.unwrap_python_model()
    pool = {row["llm"]: row["cost"] for row in model.pool()}
    assert set(pool) == {"cheap", "math-pro", "generalist"}
    whole, narrowed = model.operating_points(), model.operating_points(["math-pro", "generalist"])
    assert whole["cost"].min() == pytest.approx(pool["cheap"]) and narrowed["cost"].min() >= pool["math-pro"]
    # the prompts the curve was drawn on (the fixture router's validation set is every fixture question)
    prompts = pd.DataFrame({"prompt": pd.read_parquet(mmlu_like_dir / "questions.parquet")["question"]})
    budget = (pool["math-pro"] + pool["generalist"]) / 2
    routed = champion.predict(prompts, params={"max_cost_per_query": budget, "candidates": ["math-pro", "generalist"]})
    realised = routed["llm"].map(pool).mean()
    assert budget * 0.9 <= realised <= budget * 1.1  # met on average among the two, not by a cheap mix
    with pytest.raises(ValueError, match="max_cost_per_query"):
        champion.predict(
            prompts, params={"max_cost_per_query": pool["cheap"], "candidates": ["math-pro", "generalist"]}
        )


@pytest.mark.parametrize(
    ("frame", "params", "named"),
    [
        (pd.DataFrame({"prompt": ["fine", " "]}), {}, "prompt[1]"),
        (pd.DataFrame({"text": ["no prompt column"]}), {}, "missing inputs ['prompt']"),
        (pd.DataFrame({"prompt": ["fine"]}), {"candidates": ["gpt-99"]}, "gpt-99"),
        (pd.DataFrame({"prompt": ["fine"]}), {"max_cost_per_query": 1.0, "min_accuracy": 0.5}, "exactly one"),
        (pd.DataFrame({"prompt": ["fine"]}), {"max_cost_per_query": 1e-9}, "max_cost_per_query"),
        (pd.DataFrame({"prompt": ["fine"]}), {"max_cost_per_query": float("nan")}, "max_cost_per_query=nan"),
        (pd.DataFrame({"prompt": ["fine"]}), {"min_accuracy": float("inf")}, "min_accuracy=inf"),
    ],
)
def test_bad_input_is_refused_naming_the_field(champion, frame, params, named):
    with pytest.raises(Exception, match=re.escape(named)):
        champion.predict(frame, params=params)


def test_mlflow_models_serve_answers_invocations(registry_uri, tmp_path, prices):
    from serving.processes import free_port, server_process, venv_env

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/uniroute@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = venv_env(MLFLOW_TRACKING_URI=registry_uri, MLFLOW_REGISTRY_URI=registry_uri)  # uvicorn from the .venv
    with server_process(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env):
        body = {
            "dataframe_split": {"columns": ["prompt"], "data": [["Compute the integral of 3x from 0 to 5."]]},
            "params": {"cost_weight": 1e6},
        }
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        [row] = answer.json()["predictions"]
        assert row["llm"] == "cheap" and set(row["predicted_error"]) == set(prices)
        bad = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["prompt"], "data": [[""]]}},
            timeout=60,
        )
        assert bad.status_code == 400 and "prompt[0]" in bad.json()["message"], bad.text
        unknown = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["prompt"], "data": [["hi"]]}, "params": {"candidates": ["gpt-99"]}},
            timeout=60,
        )
        assert unknown.status_code == 400 and "candidates='gpt-99'" in unknown.json()["message"], unknown.text


def test_rank_orders_the_candidates_as_predict_chooses(champion, mmlu_like_dir):
    model = champion.unwrap_python_model()
    prompts = pd.read_parquet(mmlu_like_dir / "questions.parquet")["question"].head(12).tolist()
    vectors = model.embedder.embed(prompts)
    for params in ({"cost_weight": 0.0}, {"cost_weight": 0.3}, {"cost_weight": float("inf")}, {"min_accuracy": 0.8}):
        chosen = model.predict(None, pd.DataFrame({"prompt": prompts}), params)["llm"].tolist()
        ranked = [model.rank(p, v, params) for p, v in zip(prompts, vectors, strict=True)]
        assert [r["order"][0] for r in ranked] == chosen, params
        assert all(sorted(r["order"]) == sorted(r["cost"]) for r in ranked)
    with pytest.raises(ValueError, match="candidates"):
        model.rank(prompts[0], vectors[0], {"candidates": ["gpt-99"]})
