"""Resources the assets take: where the warehouse lives and how hard the collector tries."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb

import warehouse as wh
from profiling.collector import RetryPolicy
from router_core import DEFAULT_EMBEDDER, Embedder


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file; empty ``path`` means ``warehouse.default_path()``."""

    path: str = ""

    def connect(self) -> duckdb.DuckDBPyConnection:
        return wh.connect(self.path or None)


class CollectorResource(dg.ConfigurableResource):
    """Retry and batching settings of the response collector."""

    max_attempts: int = 5
    timeout_s: float = 60.0
    batch_size: int = 512

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, timeout_s=self.timeout_s)


class EmbedderResource(dg.ConfigurableResource):
    """The prompt embedder: the bundled model by default, or a local sentence-transformers directory or name."""

    model: str = DEFAULT_EMBEDDER
    max_seq_length: int | None = None
    batch_size: int = 64
    show_progress: bool = False  # a tqdm bar on stderr (the demo); runs log a line per chunk anyway

    def embedder(self) -> Embedder:
        return Embedder(
            self.model, batch_size=self.batch_size, max_seq_length=self.max_seq_length, show_progress=self.show_progress
        )


class ArtifactsResource(dg.ConfigurableResource):
    """Where fitted cluster maps and routers are written; empty ``root`` means ``<data home>/artifacts``."""

    root: str = ""

    def path(self, *parts: str) -> Path:
        base = Path(self.root) if self.root else wh.default_path().parent / "artifacts"
        return base.joinpath(*parts)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry; empty ``tracking_uri`` means ``$MLFLOW_TRACKING_URI``, else a sqlite file
    under ``<data home>/mlflow``."""

    tracking_uri: str = ""
    experiment: str = "uniroute"
    model_name: str = "uniroute"

    def setup(self) -> str:
        """Configure MLflow and return the experiment id (artifacts beside the sqlite file)."""
        from serving import registry

        root = registry.default_mlflow_dir()
        root.mkdir(parents=True, exist_ok=True)
        registry.configure(self.tracking_uri or registry.default_tracking_uri())
        return registry.ensure_experiment(self.experiment, root / "artifacts")
