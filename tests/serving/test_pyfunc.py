"""The registered pyfunc, loaded from a real MLflow sqlite registry: routes text, meets budgets, refuses bad
input by name; and `mlflow models serve` answers /invocations over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

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


def test_a_budget_resolves_to_the_operating_points_around_it(champion):
    prompts = pd.DataFrame({"prompt": [f"Solve {i}x + {i + 1} = 0 for x." for i in range(200)]})
    spend_little = champion.predict(prompts, params={"max_cost_per_query": 0.1})
    assert set(spend_little["llm"]) == {"cheap"}
    afford_all = champion.predict(prompts, params={"max_cost_per_query": 100.0})
    assert afford_all["cost_weight"].nunique() == 1  # the most accurate point: no mixing needed
    accurate = champion.predict(prompts, params={"min_accuracy": 0.9})
    assert (accurate["llm"] != "cheap").mean() > 0.5


@pytest.mark.parametrize(
    ("frame", "params", "named"),
    [
        (pd.DataFrame({"prompt": ["fine", " "]}), {}, "prompt[1]"),
        (pd.DataFrame({"text": ["no prompt column"]}), {}, "missing inputs ['prompt']"),
        (pd.DataFrame({"prompt": ["fine"]}), {"candidates": ["gpt-99"]}, "gpt-99"),
        (pd.DataFrame({"prompt": ["fine"]}), {"max_cost_per_query": 1.0, "min_accuracy": 0.5}, "exactly one"),
        (pd.DataFrame({"prompt": ["fine"]}), {"max_cost_per_query": 1e-9}, "max_cost_per_query"),
    ],
)
def test_bad_input_is_refused_naming_the_field(champion, frame, params, named):
    with pytest.raises(Exception, match=re.escape(named)):
        champion.predict(frame, params=params)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_invocations(registry_uri, tmp_path, prices):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry_uri, "MLFLOW_REGISTRY_URI": registry_uri}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"  # as in an activated .venv (uvicorn)
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/uniroute@champion"]
    server = subprocess.Popen(
        [*mlflow_cli, "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=open(tmp_path / "serve.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 120 s"
            time.sleep(0.5)
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
        assert bad.status_code >= 400 and "prompt[0]" in bad.text
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
