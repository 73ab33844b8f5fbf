"""Serving: the MLflow pyfunc wrapper and registry helpers (no Dagster: users load routers without it)."""

import os

# MLflow's telemetry is configured off before anything here imports mlflow (an explicit setting wins).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
