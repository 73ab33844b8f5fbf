"""Prompt embeddings, cached in the warehouse by (embedder_id, content hash): no prompt is embedded twice."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
import time

import dagster as dg

import warehouse as wh
from assets import automation
from assets.metadata import fingerprint
from assets.profiling import prompt_set
from assets.resources import EmbedderResource, WarehouseResource

GROUP = "routing"
CHUNK = 512  # prompts embedded between two warehouse writes (and log lines)


@dg.asset(group_name=GROUP, deps=[prompt_set], pool="duckdb", automation_condition=automation.EMBEDDINGS)
def prompt_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """Vectors of every prompt text; only texts without a vector from this embedder are embedded."""
    model = embedder.embedder()
    embedder_id = model.embedder_id
    started = time.perf_counter()
    with warehouse.connect() as con:
        todo = wh.missing_embeddings(con, embedder_id)
        for start in range(0, todo.height, CHUNK):
            chunk = todo.slice(start, CHUNK)
            wh.upsert_embeddings(
                con, embedder_id, chunk["content_hash"].to_list(), model.embed(chunk["text"].to_list())
            )
            done = start + chunk.height
            rate = done / (time.perf_counter() - started)
            context.log.info(f"embedded {done}/{todo.height} prompts ({rate:.1f}/s) with {embedder_id}")
        total = wh.count_embeddings(con, embedder_id)
    return dg.MaterializeResult(
        metadata={
            "embedder_id": embedder_id,
            "embedded_now": todo.height,
            "vectors": total,
            "seconds": time.perf_counter() - started,
        },
        # an embedder's vectors only grow (one per text, never rewritten), so their count identifies them: a run
        # that embedded nothing keeps the version, and the cluster map downstream stays in sync
        data_version=dg.DataVersion(fingerprint(embedder_id, total)),
    )
