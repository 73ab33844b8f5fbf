"""A saved router ready to route raw text: the router, its embedder, its default cost weight and the validation
predictions a budget resolves on, all read from one directory (what a registered version ships).

The MLflow pyfunc (``serving/pyfunc.py``) is this plus MLflow's interface; ``uniroute route`` and ``uniroute
models`` load it straight from a version's files, without importing MLflow.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from router_core._errors import RouterInputError
from router_core.embedding import Embedder
from router_core.evaluation import budget_mix, deferral_curve
from router_core.persistence import load_router
from router_core.routers import choose

__all__ = ["BUDGET_FILE", "META_FILE", "ServableRouter"]

#: Inside a router's directory: the validation predictions and scores that budgets resolve on, per sub-pool.
BUDGET_FILE = "budget_validation.npz"
#: Inside a router's directory: the embedder, its settings and the default cost weight.
META_FILE = "uniroute.json"
EMBEDDER_DIR = "embedder"  # the ONNX export (or static model) the version ships, if any


class ServableRouter:
    """Embeds prompts with the router's embedder, then routes among its pool (:meth:`load_dir` first)."""

    def load_dir(self, router_dir: str | Path) -> ServableRouter:
        """Read the router in ``router_dir`` and what serving it needs; the embedder loads on first use.
        Refuses an embedder whose id differs from the one the router was trained with."""
        router_dir = Path(router_dir)
        self.router = load_router(router_dir)
        meta = json.loads((router_dir / META_FILE).read_text())
        self.default_cost_weight = float(meta["default_cost_weight"])
        with np.load(router_dir / BUDGET_FILE) as arrays:
            self.validation_predicted, self.validation_scores = arrays["predicted"], arrays["scores"]
        self._curve = lru_cache(maxsize=64)(self._curve_of)
        self.embedder = Embedder(  # routers registered before backends existed ran torch
            meta["embedder"],
            max_seq_length=meta.get("max_seq_length"),
            backend=meta.get("backend", "torch"),
            cache_dir=router_dir / EMBEDDER_DIR,  # the ONNX export or static model shipped with the version
        )
        recorded = meta.get("embedder_id")  # versions registered before it was recorded: not checked
        if recorded is not None and recorded != self.embedder.embedder_id:
            raise RouterInputError(
                "embedder_id",
                self.embedder.embedder_id,
                f"this code's embedder differs from the one the router was trained with ({recorded!r}); its "
                "vectors would mean something else",
            )
        return self

    def pool(self) -> list[dict]:
        """The LLMs this version routes among, with their cost per query (USD): ``[{"llm", "cost"}]``."""
        return [{"llm": m, "cost": float(c)} for m, c in zip(self.router.llms_, self.router.costs_, strict=True)]

    def validation_error(self) -> np.ndarray:
        """Each LLM's validation error rate, its Psi weighted by cluster size (the share of the validation prompts
        in each cluster), in pool order; for routers without clusters, the mean of its validation errors."""
        psi = getattr(self.router, "psi_", None)
        if psi is None:
            return np.nanmean(self.router.validation_errors_, axis=0)
        weights = self.router.validation_assignments_.mean(axis=0)
        return psi @ (weights / weights.sum())

    def operating_points(self, candidates: list[str] | None = None) -> pl.DataFrame:
        """The validation deferral curve (``cost_weight, cost, accuracy``) of routing among ``candidates``."""
        names = tuple(candidates or self.router.llms_)
        self.router._index(list(names))  # unknown or duplicate names are refused, naming them
        return self._curve(names)

    def _curve_of(self, names: tuple[str, ...]) -> pl.DataFrame:
        idx = [self.router.llms_.index(name) for name in names]
        predicted, scores = self.validation_predicted[:, idx], self.validation_scores[:, idx]
        return deferral_curve(predicted, self.router.costs_[idx], scores)

    def cost_weights(self, prompts: list[str], params: dict, candidates: list[str] | None = None) -> np.ndarray:
        """Per prompt: ``cost_weight`` as given, or, for a budget (``max_cost_per_query`` or ``min_accuracy``),
        one of the two operating points around it on the validation curve of ``candidates``, drawn by a hash of
        the prompt so that on average the budget is met and the same prompt always goes the same way."""
        budget = {k: params.get(k) for k in ("max_cost_per_query", "min_accuracy")}
        if all(v is None for v in budget.values()):
            weight = params.get("cost_weight")
            return np.full(len(prompts), self.default_cost_weight if weight is None else float(weight))
        curve = self.operating_points(candidates)
        return budget_mix(curve, budget["max_cost_per_query"], budget["min_accuracy"]).cost_weights(prompts)

    def route(self, prompts: list[str], params: dict) -> dict[str, list]:
        """Columns ``llm``, ``cost_weight``, ``predicted_error`` {llm: error} and ``cost`` {llm: USD per query},
        one row per prompt; ``params``: ``cost_weight`` or a budget, and ``candidates``. Bad input is a
        :class:`RouterInputError` naming it."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise RouterInputError(f"prompt[{i}]", prompt, "must be non-empty text")
        names, weights, errors, costs = self.score(prompts, self.embedder.embed(prompts), params)
        chosen = choose(errors, costs, weights)
        cost = dict(zip(names, costs.tolist(), strict=True))
        return {
            "llm": np.asarray(names)[chosen].tolist(),
            "cost_weight": weights.tolist(),
            "predicted_error": [dict(zip(names, row, strict=True)) for row in np.round(errors, 6).tolist()],
            "cost": [cost] * len(prompts),
        }

    def score(
        self, prompts: list[str], vectors: np.ndarray, params: dict
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Candidates, cost weight per prompt, predicted errors (n, M) and costs (M,) of routing ``prompts``."""
        return self._score(prompts, vectors, params)[:4]

    def _score(
        self, prompts: list[str], vectors: np.ndarray, params: dict
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`score` and the prompts' cluster weights (n, K), None for a router without clusters."""
        names = list(params.get("candidates") or self.router.llms_)
        weights = self.cost_weights(prompts, params, names)
        errors, phi = self.router.predict_error_with_weights(vectors, names)
        return names, weights, errors, self.router.costs_[[self.router.llms_.index(name) for name in names]], phi

    def rank(self, prompt: str, vector: np.ndarray, params: dict) -> dict:
        """One prompt already embedded (``vector``): the candidates best first by predicted error + cost weight x
        cost (the gateway's fallback order; ties to the cheaper), the cost weight, each candidate's predicted
        error and cost, the prompt's cluster weights Phi(x) (None for a router without clusters) and the
        embedder's id."""
        names, weights, errors, costs, phi = self._score([prompt], vector.reshape(1, -1), params)
        weight = float(weights[0])
        score = errors[0] + (0.0 if math.isinf(weight) else weight) * costs
        order = sorted(range(len(names)), key=lambda j: (costs[j] if math.isinf(weight) else score[j], costs[j]))
        return {
            "order": [names[j] for j in order],
            "cost_weight": weight,
            "predicted_error": {n: round(float(e), 6) for n, e in zip(names, errors[0], strict=True)},
            "cost": {n: float(c) for n, c in zip(names, costs, strict=True)},
            "cluster_weights": None if phi is None else phi[0].tolist(),
            "embedder_id": self.embedder.embedder_id,
        }
