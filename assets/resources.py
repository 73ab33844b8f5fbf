"""Resources the assets take: where the warehouse lives and how hard the collector tries."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import dagster as dg
import duckdb

import warehouse as wh
from profiling.collector import RetryPolicy
from profiling.pacing import SharedPacer
from router_core import DEFAULT_BACKEND, DEFAULT_EMBEDDER, DEFAULT_MAX_SEQ_LENGTH, Embedder, RolloutRules


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file and the catalog file synced into it; empty means ``warehouse.default_path()`` and
    ``warehouse.default_catalog_path()``. The assets, the onboarding sensor and the nightly schedule all take this
    resource, so configuring it here moves all of them."""

    path: str = ""
    catalog_path: str = ""
    #: Where profiling runs stage answers until merged: empty means ``warehouse.default_staging_path(database)``.
    #: A path every run can reach (shared storage when runs execute on several machines: docs/scale-out.md),
    #: or an ``s3://bucket/prefix`` URL (``profiling.staging_location``; credentials from the environment only).
    staging_path: str = ""
    #: How long a step waits for the warehouse while another process writes it (DuckDB: one writer at a time).
    lock_wait_s: float = 1800.0

    def database(self) -> Path:
        return Path(self.path) if self.path else wh.default_path()

    def catalog(self) -> Path:
        return Path(self.catalog_path) if self.catalog_path else wh.default_catalog_path()

    def staging(self) -> Path | str:
        """The staging location: a ``Path``, or an ``s3://`` URL as given (``warehouse.staging_path``)."""
        return wh.staging_path(self.staging_path) if self.staging_path else wh.default_staging_path(self.database())

    def connect(self) -> duckdb.DuckDBPyConnection:
        """For writing (migrates the schema; one writing process at a time: waits up to ``lock_wait_s`` for it).
        A step opens the warehouse several times: each open checks the file's header and catalog, not every block
        (``warehouse.connect(verify=False)``; a damaged block is named when a query reads it)."""
        return wh.connect(self.database(), lock_wait_s=self.lock_wait_s, verify=False)

    def connect_read_only(self, lock_wait_s: float = 0.0) -> duckdb.DuckDBPyConnection:
        """For reading only: no migration, no write lock (``warehouse.connect_read_only``); waits up to
        ``lock_wait_s`` while a writer holds the file. Checked as :meth:`connect` checks it."""
        return wh.connect_read_only(self.database(), lock_wait_s, verify=False)


class CollectorResource(dg.ConfigurableResource):
    """Retry, batching and pacing settings of the response collector.

    Staged answers are written once ``batch_size`` wait or the first has waited ``flush_interval_s``: a killed run
    asks again at most the answers of its last ``flush_interval_s``. Every run paces its requests to an endpoint
    through one SQLite file (``pacing_path``; empty means ``warehouse.default_pacing_path()``), so a catalog's
    ``requests_per_minute`` holds across the runs of this machine (``profiling.pacing``).
    """

    max_attempts: int = 5
    timeout_s: float = 60.0
    batch_size: int = 512
    flush_interval_s: float = 0.5
    pacing_path: str = ""

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, timeout_s=self.timeout_s)

    def pacer(self) -> SharedPacer:
        return SharedPacer(self.pacing_path or wh.default_pacing_path())


#: The embedder's files (ONNX exports, distilled static models) under the data home, and where they were before.
EMBEDDER_CACHE_DIR, OLD_EMBEDDER_CACHE_DIR = "embedders", "onnx"
#: The variable moving them elsewhere, and its old name (still read).
EMBEDDER_CACHE_ENV, OLD_EMBEDDER_CACHE_ENV = "UNIROUTE_EMBEDDER_CACHE", "UNIROUTE_ONNX_CACHE"


class EmbedderResource(dg.ConfigurableResource):
    """The prompt embedder: the bundled model by default, or a local sentence-transformers directory or name.

    Defaults to int8 ONNX at 192 tokens (``benchmarks.embedders``: ~3x torch's prompts/s, same routing AUDC);
    ``backend="torch"``, ``max_seq_length=None`` gives sentence-transformers' own vectors. ONNX exports and distilled
    static models are kept in ``cache_dir``; empty means ``$UNIROUTE_EMBEDDER_CACHE`` (or its old name,
    ``$UNIROUTE_ONNX_CACHE``), else ``<data home>/embedders``. Those made before under ``<data home>/onnx`` are
    still read there.
    """

    model: str = DEFAULT_EMBEDDER
    backend: str = DEFAULT_BACKEND
    max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH
    batch_size: int = 64
    cache_dir: str = ""
    show_progress: bool = False  # a tqdm bar on stderr (the demo); runs log a line per chunk anyway

    def embedder(self) -> Embedder:
        home = wh.default_path().parent
        cache = self.cache_dir or os.environ.get(EMBEDDER_CACHE_ENV) or os.environ.get(OLD_EMBEDDER_CACHE_ENV)
        return Embedder(
            self.model,
            batch_size=self.batch_size,
            max_seq_length=self.max_seq_length,
            backend=self.backend,
            cache_dir=cache or home / EMBEDDER_CACHE_DIR,
            show_progress=self.show_progress,
            old_cache_dirs=[home / OLD_EMBEDDER_CACHE_DIR],
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


class RolloutResource(dg.ConfigurableResource):
    """The rules of the rollout sensor (``router_core.RolloutRules``; docs/serving.md, "Rollout: promote and roll
    back"). Promote the challenger when, over at least ``min_requests`` shadowed requests, its error (observed once
    both versions have ``min_rated`` rated requests, else predicted) is at most ``error_tolerance`` above the
    champion's and its predicted cost at most ``cost_tolerance`` (a fraction) above, both at ``confidence``. Roll
    the champion back to ``previous-champion`` when, over at least ``min_requests`` requests it served since it
    became champion, its observed error, upstream error rate (HTTP >= 500) or cost per request is confidently past
    ``max_observed_error``, ``max_upstream_error_rate`` or ``max_cost_per_request_usd`` (0: no cost guardrail).
    ``enabled: false`` makes the sensor report what it would do, and move nothing."""

    enabled: bool = True
    min_requests: int = RolloutRules.min_requests  # the defaults are RolloutRules' own
    confidence: float = RolloutRules.confidence
    error_tolerance: float = RolloutRules.error_tolerance
    cost_tolerance: float = RolloutRules.cost_tolerance
    min_rated: int = RolloutRules.min_rated
    max_observed_error: float = RolloutRules.max_observed_error
    max_upstream_error_rate: float = RolloutRules.max_upstream_error_rate
    max_cost_per_request_usd: float = RolloutRules.max_cost_per_request_usd

    def rules(self) -> RolloutRules:
        """The rules as ``router_core.RolloutRules`` (checked: a bad value names its field)."""
        return RolloutRules(**{f.name: getattr(self, f.name) for f in fields(RolloutRules)})
