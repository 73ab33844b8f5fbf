"""The registered model: routes raw prompt text with a saved ``router_core`` router (MLflow "models from code").

``mlflow.pyfunc.load_model("models:/uniroute@champion").predict(pd.DataFrame({"prompt": [...]}),
params={"cost_weight": 0.1})`` returns, per prompt, the chosen LLM and each candidate's predicted error.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from router_core import Embedder, load_router


class UniRoutePyfunc(mlflow.pyfunc.PythonModel):
    """Embeds prompts with the router's embedder, then routes among its pool."""

    def load_context(self, context) -> None:
        router_dir = Path(context.artifacts["router"])
        self.router = load_router(router_dir)
        meta = json.loads((router_dir / "uniroute.json").read_text())
        self.default_cost_weight = float(meta["default_cost_weight"])
        self.embedder = Embedder(meta["embedder"], max_seq_length=meta.get("max_seq_length"))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "prompt" not in model_input.columns:
            raise ValueError(f"model_input: needs a 'prompt' column (got {list(model_input.columns)})")
        params = params or {}
        cost_weight = float(params.get("cost_weight", self.default_cost_weight))
        candidates = params.get("candidates") or None
        x = self.embedder.embed(model_input["prompt"].tolist())
        names = list(candidates) if candidates else self.router.llms_
        errors = self.router.predict_error(x, names)
        chosen = self.router.route(x, cost_weight, names)
        out = pd.DataFrame({"llm": chosen.astype(str)})
        out["predicted_error"] = [dict(zip(names, np.round(row, 6).tolist(), strict=True)) for row in errors]
        return out


mlflow.models.set_model(UniRoutePyfunc())
