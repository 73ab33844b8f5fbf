"""The registered model: routes raw prompt text with a saved ``router_core`` router (MLflow "models from code").

``mlflow.pyfunc.load_model("models:/uniroute@champion").predict(pd.DataFrame({"prompt": [...]}),
params={"cost_weight": 0.1})`` returns, per prompt, the chosen LLM, the cost weight used, and each candidate's
predicted error and cost per query. Instead of ``cost_weight``, ``max_cost_per_query`` (USD) or
``min_accuracy`` pick the operating point that meets the budget on the validation deferral curve of the LLMs
actually routed among (``candidates``, default the whole pool).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from router_core import Embedder, RouterInputError, budget_mix, choose, deferral_curve, load_router

BUDGET_FILE = "budget_validation.npz"  # serving.registry.BUDGET_FILE (this file is logged as model code alone)


class InvalidRoutingInput(mlflow.exceptions.MlflowException, ValueError):
    """Bad input named by field and value: a ``ValueError`` for Python callers, a 400 whose ``message`` says it
    for ``mlflow models serve``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class UniRoutePyfunc(mlflow.pyfunc.PythonModel):
    """Embeds prompts with the router's embedder, then routes among its pool."""

    def load_context(self, context) -> None:
        router_dir = Path(context.artifacts["router"])
        self.router = load_router(router_dir)
        meta = json.loads((router_dir / "uniroute.json").read_text())
        self.default_cost_weight = float(meta["default_cost_weight"])
        arrays = np.load(router_dir / BUDGET_FILE)
        self.validation_predicted, self.validation_scores = arrays["predicted"], arrays["scores"]
        self._curve = lru_cache(maxsize=64)(self._curve_of)
        self.embedder = Embedder(  # routers registered before backends existed ran torch
            meta["embedder"],
            max_seq_length=meta.get("max_seq_length"),
            backend=meta.get("backend", "torch"),
            cache_dir=router_dir / "embedder",  # the ONNX export or static model shipped with the version, if any
        )
        recorded = meta.get("embedder_id")  # versions registered before it was recorded: not checked
        if recorded is not None and recorded != self.embedder.embedder_id:
            raise InvalidRoutingInput(
                f"embedder_id={self.embedder.embedder_id!r}: this code's embedder differs from the one the router "
                f"was trained with ({recorded!r}); its vectors would mean something else"
            )

    def pool(self) -> list[dict]:
        """The LLMs this version routes among, with their cost per query (USD): ``[{"llm", "cost"}]``."""
        return [{"llm": m, "cost": float(c)} for m, c in zip(self.router.llms_, self.router.costs_, strict=True)]

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

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return self._predict(model_input, params or {})
        except RouterInputError as exc:  # mlflow models serve answers 400 with this message (not a stack trace)
            raise InvalidRoutingInput(str(exc)) from exc

    def _predict(self, model_input: pd.DataFrame, params: dict) -> pd.DataFrame:
        if "prompt" not in model_input.columns:
            raise RouterInputError("model_input", list(model_input.columns), "needs a 'prompt' column")
        prompts = model_input["prompt"].tolist()
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise RouterInputError(f"prompt[{i}]", prompt, "must be non-empty text")
        names, weights, errors, costs = self._score(prompts, self.embedder.embed(prompts), params)
        chosen = choose(errors, costs, weights)
        cost = dict(zip(names, costs.tolist(), strict=True))
        return pd.DataFrame(  # one constructor: adding columns one by one costs a millisecond a prompt
            {
                "llm": np.asarray(names)[chosen],
                "cost_weight": weights,
                "predicted_error": [dict(zip(names, row, strict=True)) for row in np.round(errors, 6).tolist()],
                "cost": [cost] * len(prompts),
            }
        )

    def _score(
        self, prompts: list[str], vectors: np.ndarray, params: dict
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Candidates, cost weight per prompt, predicted errors (n, M) and costs (M,) of routing ``prompts``."""
        names = list(params.get("candidates") or self.router.llms_)
        weights = self.cost_weights(prompts, params, names)
        errors = self.router.predict_error(vectors, names)
        return names, weights, errors, self.router.costs_[[self.router.llms_.index(name) for name in names]]

    def rank(self, prompt: str, vector: np.ndarray, params: dict) -> dict:
        """One prompt already embedded (``vector``): the candidates best first by predicted error + cost weight x
        cost (the gateway's fallback order; ties to the cheaper), the cost weight, and each candidate's predicted
        error and cost. Refusals name the field (:class:`InvalidRoutingInput`)."""
        try:
            names, weights, errors, costs = self._score([prompt], vector.reshape(1, -1), params)
        except RouterInputError as exc:
            raise InvalidRoutingInput(str(exc)) from exc
        weight = float(weights[0])
        score = errors[0] + (0.0 if math.isinf(weight) else weight) * costs
        order = sorted(range(len(names)), key=lambda j: (costs[j] if math.isinf(weight) else score[j], costs[j]))
        return {
            "order": [names[j] for j in order],
            "cost_weight": weight,
            "predicted_error": {n: round(float(e), 6) for n, e in zip(names, errors[0], strict=True)},
            "cost": {n: float(c) for n, c in zip(names, costs, strict=True)},
        }


mlflow.models.set_model(UniRoutePyfunc())
