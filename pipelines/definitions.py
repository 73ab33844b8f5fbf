"""The one ``Definitions`` object ``dagster dev`` loads (``[tool.dagster] module_name``)."""

from __future__ import annotations

import dagster as dg

from assets.embeddings import prompt_embeddings
from assets.profiling import graded_responses, llm_catalog, llm_responses, prompt_set
from assets.resources import CollectorResource, EmbedderResource, WarehouseResource

defs = dg.Definitions(
    assets=[llm_catalog, prompt_set, llm_responses, graded_responses, prompt_embeddings],
    resources={"warehouse": WarehouseResource(), "collector": CollectorResource(), "embedder": EmbedderResource()},
)
