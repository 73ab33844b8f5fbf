"""Rolling out a new router version on live traffic: the ``challenger`` alias beside the served one (``champion``).

- **Shadow** (``--shadow``, on by default): when the registry's ``<name>@challenger`` exists (and names another
  version), every gateway worker loads it too and follows it as it does the champion (moved: the new version is
  loaded; gone: dropped, within the reload interval). Each routed request is ranked by the version that serves it
  and by the other one, from the SAME embedding vector: never a second embedding, never a second upstream call.
  The shadow's choice, its predicted error and cost go into the decision record (:meth:`Choice.decision_fields`).
  Two versions share a vector only when their embedders have the same id; otherwise the shadow is skipped (logged
  once per pair of versions, counted in ``uniroute_shadow_total{outcome="skipped_embedder"}``).
- **Canary** (``--canary-fraction F``): that share of routed requests is served by the challenger (the champion
  then shadows it), assigned by a hash of the client key id and the request's OpenAI ``user`` field (else the
  prompt's hash), so one user meets one version on every worker; records, the ``X-UniRoute-Router-Version``
  header and ``uniroute_routed_total{version, alias}`` carry the version that served.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from router_core.embedding import prompt_hash
from serving.chat_request import ChatRequest
from serving.gateway_config import GatewayConfig
from serving.key_policy import KeyPolicy
from serving.loaded_router import LoadedRouter, freeze_heap, load_router, split_model_uri
from serving.metrics import GatewayMetrics

__all__ = ["CHALLENGER", "Choice", "Rollout", "Shadow", "canary_position", "check_canary_fraction"]

log = logging.getLogger(__name__)

CHALLENGER = "challenger"  # serving.registry.CHALLENGER (that module imports MLflow; this one must not)
SHADOW_FIELDS = ("shadow_version", "shadow_llm", "shadow_predicted_error", "shadow_predicted_cost")


def check_canary_fraction(fraction: float) -> float:
    """``fraction`` if it is a share in [0, 1]; ``ValueError`` naming it otherwise (nan too)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"canary_fraction={fraction!r}: expected a number in [0, 1]")
    return float(fraction)


def canary_position(key_id: str, user: str | None, prompt: str) -> float:
    """Where a request falls in [0, 1): a hash of its key id and its ``user`` (else its prompt's hash); below the
    canary fraction, the challenger serves it. The same on every worker and every restart (no per-process salt)."""
    attribute = f"user:{user}" if user else f"prompt:{prompt_hash(prompt)}"
    digest = hashlib.sha256(f"{key_id}\0{attribute}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Shadow:
    """The shadowing version's choice for one request, ranked from the served request's vector."""

    version: str
    llm: str
    predicted_error: float
    predicted_cost: float


@dataclass
class Choice:
    """The versions one request meets: ``router`` serves it (as ``alias``); ``shadow``, if any, ranks it too from
    the same vector (``shadowed`` holds its choice once ranked); ``embeds`` embeds it (the champion's batcher when
    the two share vectors: one batcher, one embedder in memory; else ``router``)."""

    router: LoadedRouter
    alias: str
    shadow: LoadedRouter | None = None
    embeds: LoadedRouter | None = None
    shadowed: Shadow | None = None
    explained: bool = False  #: a ``POST /v1/route`` query: ranked like chat, counted apart, nothing served

    def decision_fields(self) -> dict:
        """The decision record's ``served_alias`` and ``shadow_*`` fields (null without a shadow)."""
        s = self.shadowed
        values = (s.version, s.llm, s.predicted_error, s.predicted_cost) if s else (None,) * len(SHADOW_FIELDS)
        return {"served_alias": self.alias, **dict(zip(SHADOW_FIELDS, values, strict=True))}


def _shares_vectors(a: LoadedRouter, b: LoadedRouter) -> bool:
    return a.model.embedder.embedder_id == b.model.embedder.embedder_id


class Rollout:
    """The challenger a gateway process holds beside its champion, which version serves each request (canary), and
    the shadow ranking. :meth:`follow` runs at start and at every reload check."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, kept: dict | None = None) -> None:
        self.name, self.alias = split_model_uri(config.model_uri)
        self.embed_batch, self.shadow = config.embed_batch, config.shadow
        self.canary_fraction = check_canary_fraction(config.canary_fraction)
        self.metrics = metrics
        self.kept = {} if kept is None else kept  # versions loaded last (shared with the gateway's champion)
        self.challenger: LoadedRouter | None = None
        self._warned: set[tuple[str, str]] = set()  # (served, shadow) versions whose embedders differ, logged once

    @property
    def wanted(self) -> bool:
        """Is a challenger loaded at all: for a shadow or a canary, beside an alias other than the challenger."""
        return (self.shadow or self.canary_fraction > 0) and self.alias != CHALLENGER

    async def follow(self, champion: LoadedRouter | None) -> None:
        """Load the challenger's version when the alias appeared or moved, drop it when the alias is gone or names
        the champion's version; a registry failure keeps what is loaded (logged, tried again at the next check)."""
        if not self.wanted:
            return
        try:
            await run_in_threadpool(self._follow, champion)
        except Exception:
            log.exception("challenger check failed; shadowing with %s", self.challenger and self.challenger.version)

    def _follow(self, champion: LoadedRouter | None) -> None:
        import mlflow

        version = mlflow.MlflowClient().get_registered_model(self.name).aliases.get(CHALLENGER)
        if version is None or (champion is not None and str(version) == champion.version):
            if self.challenger is not None:
                log.info("%s@%s gone or now the champion: no shadow", self.name, CHALLENGER)
            self.challenger = None
            return
        if self.challenger is not None and self.challenger.version == str(version):
            return
        router = load_router(f"models:/{self.name}@{CHALLENGER}", self.embed_batch, self.kept)
        self.challenger = router  # requests already routing keep the pair they took
        freeze_heap()
        log.info("shadowing with %s@%s version %s", self.name, CHALLENGER, router.version)

    def choose(
        self, champion: LoadedRouter | None, key_id: str, chat: ChatRequest, explained: bool = False
    ) -> Choice | None:
        """The versions this request meets (None: no router loaded yet). A named-model request, or any request
        while no challenger is loaded, meets the champion alone. ``explained``: a ``POST /v1/route`` query, counted
        in ``uniroute_route_queries_total`` instead of the served requests' metrics."""
        challenger = self.challenger
        if champion is None or challenger is None or not chat.routed:
            return None if champion is None else Choice(champion, self.alias, explained=explained)
        canary = canary_position(key_id, chat.forward.get("user"), chat.prompt) < self.canary_fraction
        served, other = (challenger, champion) if canary else (champion, challenger)
        embeds = champion if _shares_vectors(served, champion) else served
        alias = CHALLENGER if canary else self.alias
        return Choice(served, alias, other if self.shadow else None, embeds, explained=explained)

    async def rank(self, choice: Choice, chat: ChatRequest, params: dict, endpoints: dict, policy: KeyPolicy) -> dict:
        """Rank the prompt with the serving version (``LoadedRouter.rank``'s answer) and, from the same vector, with
        the shadow (into ``choice.shadowed``); the shadow ranks its own reachable LLMs, or those of the request's
        ``candidates`` (else the key's) it has. A shadow that cannot rank the request never fails it (counted)."""
        served, shadow = choice.router, choice.shadow
        if shadow is not None and not _shares_vectors(served, shadow):
            self._skip(served, shadow)
            shadow = None
        vector = await (choice.embeds or served).batcher.embed(chat.prompt)
        ranked = served.model.rank(chat.prompt, vector, params)
        outcome = (
            None
            if shadow is None
            else self._rank_shadow(choice, shadow, chat, vector, ranked, params, endpoints, policy)
        )
        if choice.explained:  # an explanation served nothing: counted apart
            self.metrics.observe_route_query(served.version, choice.alias)
            return ranked
        self.metrics.observe_version(served.version, choice.alias)
        if outcome is not None:
            self.metrics.observe_shadow(outcome)
        return ranked

    @staticmethod
    def _rank_shadow(choice: Choice, shadow: LoadedRouter, chat: ChatRequest, vector, ranked: dict, *context) -> str:
        """Rank with the shadow into ``choice.shadowed``; the outcome to count: agreed, disagreed or failed."""
        params, endpoints, policy = context
        pool = shadow.reachable(endpoints, policy)
        wanted = chat.candidates or policy.candidates  # the request's, else the key's own set, else all
        candidates = [c for c in wanted if c in pool] if wanted else pool
        try:
            if not candidates:
                raise ValueError("candidates: none of the shadow's LLMs is reachable")
            theirs = shadow.model.rank(chat.prompt, vector, {**params, "candidates": candidates})
        except ValueError:  # an impossible budget for its pool, or no LLM of it reachable: no shadow choice
            return "failed"
        llm = theirs["order"][0]
        choice.shadowed = Shadow(shadow.version, llm, theirs["predicted_error"][llm], theirs["cost"][llm])
        return "agreed" if llm == ranked["order"][0] else "disagreed"

    def _skip(self, served: LoadedRouter, shadow: LoadedRouter) -> None:
        """Count a shadow skipped because the two versions' vectors differ; say so once per pair of versions."""
        self.metrics.observe_shadow("skipped_embedder")
        pair = (served.version, shadow.version)
        if pair not in self._warned:
            self._warned.add(pair)
            log.warning(
                "no shadow of version %s by version %s: their embedders differ (%s vs %s), and a request is embedded "
                "once",
                *pair,
                served.model.embedder.embedder_id,
                shadow.model.embedder.embedder_id,
            )
