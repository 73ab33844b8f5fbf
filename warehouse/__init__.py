"""warehouse: the DuckDB file behind UniRoute (schema, migrations, and every read and write)."""

from warehouse.catalog import CatalogError, LLMEntry, load_catalog, sync_catalog
from warehouse.db import SchemaError, connect, default_path, schema_version
from warehouse.store import (
    WarehouseInputError,
    insert_responses,
    pending_pairs,
    read_embeddings,
    read_failures,
    read_grades,
    read_llms,
    read_outcomes,
    read_prompts,
    read_responses,
    record_failures,
    sync_llms,
    upsert_embeddings,
    upsert_grades,
    upsert_llms,
    upsert_prompts,
)

__all__ = [
    "CatalogError",
    "LLMEntry",
    "SchemaError",
    "WarehouseInputError",
    "connect",
    "default_path",
    "insert_responses",
    "load_catalog",
    "pending_pairs",
    "read_embeddings",
    "read_failures",
    "read_grades",
    "read_llms",
    "read_outcomes",
    "read_prompts",
    "read_responses",
    "record_failures",
    "schema_version",
    "sync_catalog",
    "sync_llms",
    "upsert_embeddings",
    "upsert_grades",
    "upsert_llms",
    "upsert_prompts",
]
