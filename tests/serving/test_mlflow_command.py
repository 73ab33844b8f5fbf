"""`uniroute mlflow ...`: MLflow's UI on a copied data home serves the copy's artifacts (never the original's), and
`mlflow models serve` works as docs/serving.md prints it, without the venv on PATH."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import requests

from serving.processes import free_port, server_process
from serving.registry_files import follow_moved_artifacts, sqlite_path

pytestmark = pytest.mark.e2e  # real MLflow servers


def _without_venv_on_path() -> dict[str, str]:
    """This environment as a shell that never activated the venv: its bin directory off PATH, no registry set."""
    bin_dir = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    env = {**os.environ, "PATH": path or "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    return env


def test_the_ui_on_a_copied_data_home_serves_the_copys_artifacts(registry_uri, tmp_path):
    original = tmp_path / "original" / "mlflow"
    shutil.copytree(sqlite_path(registry_uri).parent, original)
    follow_moved_artifacts(original / "mlflow.db")  # the original home, as the pipeline left it
    copy = tmp_path / "copy" / "mlflow"
    shutil.copytree(original, copy)
    shutil.rmtree(original / "artifacts")  # whatever still points at the original fails from here on
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the demo's printed command: the registry beside the copy's warehouse, nothing re-rooted it before
    command = [sys.executable, "-m", "serving.cli", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    env = {**_without_venv_on_path(), "UNIROUTE_WAREHOUSE": str(copy.parent / "warehouse.duckdb")}
    with server_process(command, f"{url}/health", tmp_path / "ui.log", env, timeout_s=120):
        mlmodel = requests.get(
            f"{url}/model-versions/get-artifact",
            params={"name": "uniroute", "version": "1", "path": "MLmodel"},
            timeout=30,
        )
        # served from the copy: the original's artifacts are gone
        assert mlmodel.status_code == 200 and "python_function" in mlmodel.text, mlmodel.text[:300]


def test_mlflow_models_serve_as_the_readme_prints_it(registry_uri, tmp_path, prices):
    """`uniroute mlflow models serve ...`: mlflow starts uvicorn by name, found without an activated venv."""
    port = free_port()
    command = [sys.executable, "-m", "serving.cli", "mlflow", "--tracking-uri", registry_uri, "models", "serve"]
    command += ["-m", "models:/uniroute@champion", "--env-manager", "local", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    with server_process(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", _without_venv_on_path()):
        body = {
            "dataframe_split": {"columns": ["prompt"], "data": [["What is 2 + 2?"]]},
            "params": {"cost_weight": 1e6},
        }
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        [row] = answer.json()["predictions"]
        assert row["llm"] == "cheap" and set(row["cost"]) == set(prices)


def test_mlflow_without_arguments_is_one_line_and_exit_2(registry_uri, capsys):
    from serving.cli import main

    assert main(["mlflow", "--tracking-uri", registry_uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniroute mlflow: no mlflow arguments") and len(err.splitlines()) == 1
