"""A registry version loaded to route: its pyfunc and the batcher that embeds concurrent requests' prompts
together; loading a version by alias (the last few kept loaded, so moving back is instant); and keeping what the
gateway loads at start out of the garbage collector."""

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


#: Versions kept loaded in this process after it moves off them (least recently loaded dropped first), so a rollback
#: to the version served before, or a promotion of a challenger already loaded, swaps in at once instead of
#: loading for seconds (``benchmarks/rollout_rollback.py``: every worker follows a rollback within the reload
#: interval under load). Each costs its embedder's and router's memory.
KEEP_LOADED = 3
_loaded: dict[tuple[str, str, str, int], LoadedRouter] = {}  # insertion order: the least recently loaded first


def load_router(model_uri: str, embed_batch: int = 32) -> LoadedRouter:
    """Resolve the alias to a version and load that version (so the version served is the one recorded), or take
    it from the :data:`KEEP_LOADED` versions this process loaded last (the gateway loads from one task at a time)."""
    import mlflow

    name, alias = split_model_uri(model_uri)
    version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    key = (mlflow.get_tracking_uri(), name, version, embed_batch)
    router = _loaded.pop(key, None)
    if router is None:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
        router = LoadedRouter(version=version, model=model, embed_batch=embed_batch)
    _loaded[key] = router
    while len(_loaded) > KEEP_LOADED:
        del _loaded[next(iter(_loaded))]
    return router


def freeze_heap() -> None:
    """Collect, then move every object alive (libraries, the router, the catalog) out of the garbage collector's
    sight (``gc.freeze``): its full collections, which otherwise scan the ~300k objects the gateway loads at start
    (~170 ms each, every few thousand requests, stalling every request in flight), scan what requests allocate.
    After a router swap the heap is unfrozen first, so a version replaced, once no longer kept loaded, can be
    collected (one full collection per promotion)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
