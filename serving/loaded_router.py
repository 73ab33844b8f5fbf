"""A registry version loaded to route: its pyfunc and the batcher that embeds concurrent requests' prompts
together; loading a version by alias; and keeping what the gateway loads at start out of the garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serving.batching import EmbeddingBatcher

if TYPE_CHECKING:
    from serving.key_policy import KeyPolicy


@dataclass
class LoadedRouter:
    """One registry version's pyfunc (router_core router + embedder), ready to route; concurrent requests'
    prompts are embedded together (:class:`serving.batching.EmbeddingBatcher`)."""

    version: str
    model: object  # serving.pyfunc.UniRoutePyfunc
    embed_batch: int = 32
    batcher: EmbeddingBatcher = field(init=False)
    costs: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = EmbeddingBatcher(self.model.embedder.embed, self.embed_batch)
        self.costs = {row["llm"]: row["cost"] for row in self.model.pool()}

    def pool(self) -> list[str]:
        """The LLMs this version routes among."""
        return list(self.costs)

    def reachable(self, endpoints: Mapping[str, object], policy: KeyPolicy) -> list[str]:
        """What a key can reach: this version's LLMs active in the catalog (``endpoints``) and allowed for it."""
        return [m for m in self.pool() if m in endpoints and policy.allows(m)]

    async def rank(self, prompt: str, params: dict) -> dict:
        """The candidates best first, the cost weight, each candidate's predicted error and cost."""
        vector = await self.batcher.embed(prompt)
        return self.model.rank(prompt, vector, params)


def split_model_uri(model_uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` -> (name, alias); ``ValueError`` naming the value otherwise."""
    name, sep, alias = model_uri.removeprefix("models:/").partition("@")
    if not model_uri.startswith("models:/") or not sep or not name or not alias:
        raise ValueError(f"model_uri={model_uri!r}: expected models:/<name>@<alias>, e.g. models:/uniroute@champion")
    return name, alias


def load_router(model_uri: str, embed_batch: int = 32) -> LoadedRouter:
    """Resolve the alias to a version and load that version (so the version served is the one recorded)."""
    import mlflow

    name, alias = split_model_uri(model_uri)
    version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    return LoadedRouter(version=version, model=model, embed_batch=embed_batch)


def freeze_heap() -> None:
    """Collect, then move every object alive (libraries, the router, the catalog) out of the garbage collector's
    sight (``gc.freeze``): its full collections, which otherwise scan the ~300k objects the gateway loads at start
    (~170 ms each, every few thousand requests, stalling every request in flight), scan what requests allocate.
    After a router swap the heap is unfrozen first, so the version replaced can be collected (one full collection
    per promotion)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
