"""Resources the assets take: where the warehouse lives and how hard the collector tries."""

from __future__ import annotations

import dagster as dg
import duckdb

import warehouse as wh
from profiling.collector import RetryPolicy


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
