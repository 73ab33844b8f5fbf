"""The registered model: routes raw prompt text with a saved ``router_core`` router (MLflow "models from code").

``mlflow.pyfunc.load_model("models:/uniroute@champion").predict(pd.DataFrame({"prompt": [...]}),
params={"cost_weight": 0.1})`` returns, per prompt, the chosen LLM, the cost weight used, and each candidate's
predicted error and cost per query. Instead of ``cost_weight``, ``max_cost_per_query`` (USD) or
``min_accuracy`` pick the operating point of the pool's validation deferral curve that meets the budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl

from router_core import Embedder, RouterInputError, budget_mix, choose, load_router


class UniRoutePyfunc(mlflow.pyfunc.PythonModel):
    """Embeds prompts with the router's embedder, then routes among its pool."""

    def load_context(self, context) -> None:
        router_dir = Path(context.artifacts["router"])
        self.router = load_router(router_dir)
        meta = json.loads((router_dir / "uniroute.json").read_text())
        self.default_cost_weight = float(meta["default_cost_weight"])
        self.operating_points = pl.DataFrame(meta["operating_points"])
        self.embedder = Embedder(  # routers registered before backends existed ran torch
            meta["embedder"],
            max_seq_length=meta.get("max_seq_length"),
            backend=meta.get("backend", "torch"),
            cache_dir=router_dir / "embedder",  # the ONNX export shipped with the version, if any
        )

    def cost_weights(self, prompts: list[str], params: dict) -> np.ndarray:
        """Per prompt: ``cost_weight`` as given, or, for a budget (``max_cost_per_query`` or ``min_accuracy``),
        one of the two operating points of the validation curve around it, drawn by a hash of the prompt so
        that on average the budget is met and the same prompt always goes the same way."""
        budget = {k: params.get(k) for k in ("max_cost_per_query", "min_accuracy")}
        if all(v is None for v in budget.values()):
            weight = params.get("cost_weight")
            return np.full(len(prompts), self.default_cost_weight if weight is None else float(weight))
        mix = budget_mix(self.operating_points, budget["max_cost_per_query"], budget["min_accuracy"])
        return mix.cost_weights(prompts)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "prompt" not in model_input.columns:
            raise RouterInputError("model_input", list(model_input.columns), "needs a 'prompt' column")
        prompts = model_input["prompt"].tolist()
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise RouterInputError(f"prompt[{i}]", prompt, "must be non-empty text")
        params = params or {}
        weights = self.cost_weights(prompts, params)
        names = list(params.get("candidates") or self.router.llms_)
        errors = self.router.predict_error(self.embedder.embed(prompts), names)
        costs = self.router.costs_[[self.router.llms_.index(name) for name in names]]
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


mlflow.models.set_model(UniRoutePyfunc())
