"""A router version's model card: what its description in the registry says (pool, costs, AUDC and QNC against
the prompt-blind baseline, what it was built from, how to call it), in Markdown MLflow's UI renders."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from router_core import OperatingPoint
from serving.gate import usd_per_1k
from serving.registry_files import sqlite_path

__all__ = ["ModelCard", "PoolEntry", "describe_operating_point"]


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
    features: str = ""  #: how Psi was learned when not from validation alone (e.g. validation+traffic: ...)
    profiles: str = ""  #: LLMs onboarded on part of the validation prompts so far (empty: every profile is full)

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
                *([f"- features: {self.features}"] if self.features else []),
                *([f"- partial profiles: {self.profiles}"] if self.profiles else []),
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
