"""The registered model: routes raw prompt text with a saved ``router_core`` router (MLflow "models from code").

``mlflow.pyfunc.load_model("models:/uniroute@champion").predict(pd.DataFrame({"prompt": [...]}),
params={"cost_weight": 0.1})`` returns, per prompt, the chosen LLM, the cost weight used, and each candidate's
predicted error and cost per query. Instead of ``cost_weight``, ``max_cost_per_query`` (USD) or
``min_accuracy`` pick the operating point that meets the budget on the validation deferral curve of the LLMs
actually routed among (``candidates``, default the whole pool).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from router_core import RouterInputError
from router_core.servable import BUDGET_FILE, ServableRouter

__all__ = ["BUDGET_FILE", "InvalidRoutingInput", "UniRoutePyfunc"]


class InvalidRoutingInput(mlflow.exceptions.MlflowException, ValueError):
    """Bad input named by field and value: a ``ValueError`` for Python callers, a 400 whose ``message`` says it
    for ``mlflow models serve``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class UniRoutePyfunc(ServableRouter, mlflow.pyfunc.PythonModel):
    """:class:`router_core.servable.ServableRouter` (embeds prompts, then routes among the pool) as MLflow's
    pyfunc; bad input is an :class:`InvalidRoutingInput`."""

    def load_context(self, context) -> None:
        try:
            self.load_dir(Path(context.artifacts["router"]))
        except RouterInputError as exc:
            raise InvalidRoutingInput(str(exc)) from exc

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            if "prompt" not in model_input.columns:
                raise RouterInputError("model_input", list(model_input.columns), "needs a 'prompt' column")
            # one constructor: adding columns one by one costs a millisecond a prompt
            return pd.DataFrame(self.route(model_input["prompt"].tolist(), params or {}))
        except RouterInputError as exc:  # mlflow models serve answers 400 with this message (not a stack trace)
            raise InvalidRoutingInput(str(exc)) from exc

    def rank(self, prompt: str, vector, params: dict) -> dict:
        try:
            return super().rank(prompt, vector, params)
        except RouterInputError as exc:
            raise InvalidRoutingInput(str(exc)) from exc


mlflow.models.set_model(UniRoutePyfunc())
