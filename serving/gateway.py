"""An OpenAI-compatible routing gateway: ``POST /v1/chat/completions`` with ``model="uniroute"`` routes the
request with the champion router and forwards it to the chosen LLM's endpoint from the catalog.

- **The answer** is the endpoint's own JSON plus a ``uniroute`` field (LLM, router version, cost weight, attempts,
  realised cost); headers ``X-UniRoute-LLM`` and ``X-UniRoute-Router-Version`` name them too. ``stream=true``
  passes the endpoint's server-sent events through, the headers and a first SSE comment line naming the choice.
  ``model=<LLM>`` asks one LLM of the router's pool directly (no routing, no budget fields, no fallback).
- **Routing options** ride in the body beside OpenAI's fields: ``cost_weight``, ``max_cost_per_query``,
  ``min_accuracy`` (a budget resolves on the validation curve of the LLMs actually routed among) and
  ``candidates``; they are not forwarded. Every field is checked before anything is paid for
  (:mod:`serving.chat_request`).
- **Policy in one place**: the middleware (:mod:`serving.middleware`) authenticates client keys, bounds the body
  and shapes every error in OpenAI's form; :class:`serving.upstream.Upstreams` holds timeouts, retries, fallbacks
  (the router's next-best LLMs, under the same cost weight) and circuit breakers; :mod:`serving.metrics` counts and
  logs every request; :mod:`serving.decisions` records every chat request off the request path.
- **Explanations**: ``POST /v1/route`` ranks a chat body as chat would, forwarding nothing (:mod:`serving.explain`).
- **Learning from traffic**: ``POST /v1/feedback`` rates a request of the asking key by the id the answer's
  ``x-request-id`` gave (an id that names its key: :class:`serving.feedback.RequestIds`); with
  ``traffic_sample_rate`` above 0 a sample of routed requests' prompts and answers is STORED
  (:mod:`serving.traffic`; a key with ``store: false`` never). Both are written off the request path like
  decisions (:mod:`serving.recordlog`).
- **Reloads**: a background task polls the registry; when the alias (``champion``) moves (or ``challenger``: shadow
  and canary, :mod:`serving.rollout`), the new version is loaded on a thread and swapped in; requests in flight
  finish on the router they started with. The catalog file is re-read when it changes. ``/ready`` answers 200 once
  a router is loaded; ``/health`` whenever the process runs.
- **Spend** is reserved, then settled (:meth:`serving.keys.KeyStore.reserve`): once the LLMs to ask are known, the
  request holds its worst case on the key's budget (each LLM's prices times the body's bytes, an upper bound of its
  prompt tokens, and its ``max_tokens``, else ``max_tokens`` of the config; the dearest LLM it may be sent to);
  the answer settles the real cost, a failure releases the hold. The response says what the request cost
  (``x-uniroute-response-cost``, non-streaming answers) and what the key has left (``x-ratelimit-*``).
- API keys of the endpoints come from the environment variable each catalog entry names, at request time, and
  are never logged or returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import polars as pl
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import warehouse as wh
from router_core.embedding import prompt_hash
from serving import explain, feedback, traffic
from serving.chat_request import ROUTED_MODEL, ChatRequest, ChatRequestError, Limits, parse_chat_request, short_repr
from serving.decisions import DecisionLog, default_directory, learning_fields, token_count
from serving.feedback import FeedbackError, FeedbackLog, OwnerIndex, Ownership, RequestIds
from serving.gateway_config import CONFIG_ENV, GatewayConfig, open_ledger, request_id_secret_path
from serving.key_policy import ANONYMOUS_ID
from serving.keys import Hold, KeyPolicy, KeyStore
from serving.loaded_router import LoadedRouter, freeze_heap, load_router, split_model_uri
from serving.metrics import GatewayMetrics, ObservabilityMiddleware
from serving.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    ErrorShapingMiddleware,
    RequestError,
    error_response,
    http_exception_handler,
    read_json,
    upstream_error_code,
)
from serving.rollout import Choice, Rollout
from serving.upstream import (
    Timeouts,
    UpstreamResult,
    Upstreams,
    realised_cost,
    retry_after_header,
)

log = logging.getLogger(__name__)


@dataclass
class _Call:
    """One chat request on its way: what the decision log, the metrics and the access log need."""

    request: Request
    chat: ChatRequest
    policy: KeyPolicy
    router_version: str
    started: float
    endpoints: dict[str, dict]
    expected_cost: dict[str, float]  # the router's cost per query of each LLM, for answers without token counts
    ranked: dict | None = None
    order: list[str] = field(default_factory=list)
    hold: Hold | None = None  # the worst case reserved on the key's budget
    bound: explain.Bound | None = None  # what bounded the choice (a routed request)
    choice: Choice | None = None  # the versions it meets: the one serving it, the one shadowing it


COST_HEADER = "x-uniroute-response-cost"  # USD, as LiteLLM's x-litellm-response-cost
HOLD_MARGIN_S = 60.0  # a hold outlives its request's deadlines by this much, then expires (a killed worker's)


class Gateway:
    """State of one gateway process: the router served, the catalog, the upstream policy, metrics and logs."""

    def __init__(self, config: GatewayConfig, keys: KeyStore | None = None) -> None:
        split_model_uri(config.model_uri)
        self.config = config
        self.limits = Limits(max_tokens=config.max_tokens)
        self.catalog_path = Path(config.catalog_path)
        self.keys = keys if keys is not None else KeyStore.load(config.keys_file, ledger=open_ledger(config))
        self.metrics = GatewayMetrics()
        self.kept: dict = {}  # the versions this gateway loaded last, kept loaded (serving.loaded_router.load_router)
        self.rollout = Rollout(config, self.metrics, self.kept)
        self.upstreams = Upstreams(retries=config.retries, max_response_bytes=config.max_upstream_bytes)
        self.router: LoadedRouter | None = None
        self.endpoints: dict[str, dict] = {}
        self.decisions: DecisionLog | None = None
        self.feedback: FeedbackLog | None = None
        self.traffic: traffic.TrafficLog | None = None  # None: no traffic is sampled
        self.request_ids: RequestIds | None = None
        self.owners: OwnerIndex | None = None
        self._catalog_mtime = 0.0
        self._tasks: list[asyncio.Task] = []

    # ---- lifecycle ----
    async def start(self) -> None:
        """Read the catalog (a bad one fails the start) and load the router before serving, so that a worker
        never answers 503 while its siblings route; if the registry fails, serve anyway (``/ready`` says 503) and
        keep trying in the background."""
        if self.config.tracking_uri:
            from serving import registry

            registry.configure(self.config.tracking_uri)
        self.reload_catalog()
        await self.upstreams.start()
        directory = self.config.decisions_dir or default_directory()
        self.decisions = DecisionLog(directory, metrics=self.metrics)
        self.owners = OwnerIndex(directory)
        self.request_ids = RequestIds.load(request_id_secret_path(self.config))
        self.feedback = FeedbackLog(self.config.feedback_dir, metrics=self.metrics)
        if traffic.check_rate(self.config.traffic_sample_rate) > 0:
            self.traffic = traffic.TrafficLog(self.config.traffic_dir, metrics=self.metrics)
        await self._check_router()
        self._tasks = [asyncio.create_task(self._watch())]

    async def stop(self) -> None:
        """Stop watching, close the upstream session, write every queued decision, rating and traffic sample
        (SIGTERM under uvicorn)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.upstreams.stop()
        for record_log in (self.decisions, self.feedback, self.traffic):
            if record_log is not None:
                await run_in_threadpool(record_log.close)
        self.metrics.close()

    def reload_catalog(self) -> bool:
        """Re-read the catalog if its file changed; a bad catalog keeps the previous one (and is logged)."""
        mtime = self.catalog_path.stat().st_mtime
        if mtime == self._catalog_mtime:
            return False
        try:
            catalog = wh.load_catalog(self.catalog_path)
        except wh.CatalogError as exc:
            if not self.endpoints:
                raise
            log.error("catalog %s invalid, keeping the previous one: %s", self.catalog_path, exc)
            return False
        routable = catalog.filter(pl.col("active") & pl.col("base_url").is_not_null())  # import-only: no endpoint
        self.endpoints = {row["name"]: row for row in routable.iter_rows(named=True)}
        self._catalog_mtime = mtime
        return True

    async def _watch(self) -> None:
        """Every ``reload_interval_s``: re-read a changed catalog, load the alias's version when it moves."""
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            with contextlib.suppress(wh.CatalogError):  # logged; the previous catalog stays
                self.reload_catalog()
            self.keys.reload_if_changed()  # a revoked key is refused from here on; a bad file is logged and kept
            await self._check_router()

    async def _check_router(self) -> None:
        """Load the alias's version if none is loaded or the alias moved; failures are logged (retried later)."""
        import mlflow

        name, alias = split_model_uri(self.config.model_uri)
        try:
            current = await run_in_threadpool(lambda: mlflow.MlflowClient().get_model_version_by_alias(name, alias))
            if self.router is None or str(current.version) != self.router.version:
                started = time.perf_counter()
                router = await run_in_threadpool(load_router, self.config.model_uri, self.config.embed_batch, self.kept)
                self.router = router  # requests already routing keep the version they took
                freeze_heap()
                seconds = time.perf_counter() - started
                log.info("serving %s version %s (loaded in %.1f s)", self.config.model_uri, router.version, seconds)
        except Exception:  # the registry may be briefly unreachable: keep serving, try again
            log.exception("router check failed; serving version %s", self.router and self.router.version)
        await self.rollout.follow(self.router)  # the challenger: appeared, moved or gone

    # ---- requests ----
    def _pool(self, router: LoadedRouter, endpoints: dict[str, dict], policy: KeyPolicy) -> list[str]:
        """What a key can reach: the router's LLMs active in the catalog and allowed for the key."""
        return router.reachable(endpoints, policy)

    async def _chat_request(self, request: Request) -> ChatRequest:
        """The checked chat body of ``request`` (400 naming the field), its model allowed for the key (403)."""
        try:
            chat = parse_chat_request(await read_json(request), self.limits)
        except ChatRequestError as exc:
            raise RequestError(400, str(exc), exc.param, exc.code) from None
        request.state.model = chat.model
        request.state.key.require_model(chat.model)
        return chat

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        policy: KeyPolicy = request.state.key
        chat = await self._chat_request(request)
        choice = self.rollout.choose(self.router, policy.key_id, chat)  # its versions, even if a reload swaps them
        if choice is None:
            return error_response(503, "not ready: no router loaded yet", None, "not_ready", {"Retry-After": "5"})
        router = choice.router
        call = _Call(request, chat, policy, router.version, started, self.endpoints, router.costs, choice=choice)
        pool = self._pool(router, call.endpoints, policy)
        if chat.routed:
            await self._route(call, router, pool)
        elif chat.model in pool:
            call.order = [chat.model]
        else:
            message = f"model={chat.model!r}: not {ROUTED_MODEL!r} nor an LLM of {pool}"
            raise RequestError(404, message, "model", "model_not_found")
        call.hold = self._reserve(call, len(await request.body()))
        request.state.request_id = self.request_ids.sign(request.state.request_id, policy.key_id)  # its key's
        try:
            result = await self.upstreams.call([(m, call.endpoints[m]) for m in call.order], chat.forward, chat.stream)
        except BaseException:  # the client left (cancelled), or a bug: nothing to pay for
            self.keys.release(call.hold)
            raise
        if result.llm is None:
            self._finish(call, result, result.status)
            headers = {"Retry-After": retry_after_header(result.retry_after_s)} if result.status in (429, 503) else {}
            code = upstream_error_code(result.status)
            retry = False if result.final else None  # an LLM refused the request itself: the same again
            return error_response(result.status, result.error or "no answer", "model", code, headers, retry)
        headers = {"X-UniRoute-LLM": result.llm, "X-UniRoute-Router-Version": router.version}
        headers |= explain.headers(call.ranked, call.bound)
        if result.stream is not None:
            return StreamingResponse(self._relay(call, result), media_type="text/event-stream", headers=headers)
        cost = self._finish(call, result, 200)
        if cost is not None:
            headers[COST_HEADER] = f"{cost:.8f}"
        self._keep_traffic(call, result, result.payload)
        payload = {**result.payload, "uniroute": self._summary(call, result, cost)}
        return JSONResponse(payload, headers=headers)

    def _sampled(self, call: _Call) -> bool:
        """Is this request's text to be stored? Only with sampling on, for a routed request of a key that allows it,
        when its id falls in the sample."""
        if self.traffic is None or not call.chat.routed or not call.policy.store:
            return False
        return traffic.sampled(call.request.state.request_id, self.config.traffic_sample_rate)

    def _keep_traffic(self, call: _Call, result: UpstreamResult, answer: object) -> None:
        """Queue the traffic record of a sampled request (its answer's JSON, or a stream's bytes: the log's thread
        takes the text out)."""
        if not self._sampled(call) or result.llm is None:
            return
        ranked = call.ranked or {}
        self.traffic.record(
            {
                "request_id": call.request.state.request_id,
                "at": datetime.now(UTC),
                "key_id": call.policy.key_id,
                "router_version": call.router_version,
                "chosen_llm": result.llm,
                "prompt": call.chat.prompt,
                "messages": call.chat.forward["messages"],
                "answer": answer,
                "embedder_id": ranked.get("embedder_id"),
                "cluster_weights": ranked.get("cluster_weights"),
            }
        )

    def _reserve(self, call: _Call, body_bytes: int) -> Hold:
        """Hold the request's worst case on its key's budget (``LimitError`` 429 when it is spent or held)."""
        forward = call.chat.forward
        output = forward.get("max_completion_tokens") or forward.get("max_tokens") or self.config.max_tokens
        worst = {"prompt_tokens": body_bytes, "completion_tokens": output}  # a token is at least one byte
        rows = [call.endpoints[m] for m in call.order]
        costs = [realised_cost(row, worst) for row in rows]
        usd = max(
            (c if c is not None else call.expected_cost.get(m, 0.0)) for m, c in zip(call.order, costs, strict=True)
        )
        hold_s = sum(Timeouts.of(row).total_s for row in rows) + HOLD_MARGIN_S
        hold = self.keys.reserve(call.policy, usd, hold_s)
        call.request.state.remaining_usd = hold.remaining_usd
        return hold

    async def _route(self, call: _Call, router: LoadedRouter, pool: list[str]) -> None:
        """Rank what the key and request allow (:func:`serving.explain.rank`); the first 1 + fallbacks are asked."""
        began = time.perf_counter()
        by_rollout = partial(self.rollout.rank, call.choice, call.chat, endpoints=call.endpoints, policy=call.policy)
        call.ranked, call.bound = await explain.rank(router, call.policy, call.chat, pool, by_rollout)
        self.metrics.observe_routing(time.perf_counter() - began)
        call.order = call.ranked["order"][: 1 + self.config.fallbacks]

    async def route(self, request: Request) -> Response:
        """``POST /v1/route``: a chat body's ranking and why (:func:`serving.explain.explanation`), as the same chat
        request would be routed; nothing is forwarded, held or charged."""
        chat = await self._chat_request(request)
        choice = self.rollout.choose(self.router, request.state.key.key_id, chat, explained=True)
        if choice is None:
            return error_response(503, "not ready: no router loaded yet", None, "not_ready", {"Retry-After": "5"})
        explain.require_routed(chat)
        router = choice.router
        call = _Call(request, chat, request.state.key, router.version, 0.0, self.endpoints, {}, choice=choice)
        await self._route(call, router, self._pool(router, call.endpoints, call.policy))
        return JSONResponse(explain.explanation(call.ranked, call.bound, router.version, explain.served(choice)))

    async def _relay(self, call: _Call, result: UpstreamResult):
        """The upstream's SSE bytes; the first chunk is prefixed with a comment naming the choice (clients skip
        SSE comments). The decision is recorded when the stream ends, however it ends."""
        head = f": uniroute {json.dumps(self._summary(call, result, None))}\n\n".encode()
        kept = bytearray() if self._sampled(call) else None  # a sampled stream's bytes, for the traffic log
        try:
            async for chunk in result.stream:
                yield head + chunk if head else chunk
                head = b""
                if kept is not None:
                    kept += chunk
        finally:
            await result.stream.aclose()
            self._finish(call, result, 200)
            if kept is not None:
                self._keep_traffic(call, result, bytes(kept))

    def _summary(self, call: _Call, result: UpstreamResult, cost: float | None) -> dict:
        return {
            "llm": result.llm,
            "router_version": call.router_version,
            "cost_weight": call.ranked["cost_weight"] if call.ranked else None,
            "attempts": len(result.attempts),
            "cost_usd": cost,
            **explain.short_form(call.ranked, call.bound),
        }

    def _finish(self, call: _Call, result: UpstreamResult, status: int) -> float | None:
        """Realised cost (charged to the key), metrics, the decision record and the access log's fields."""
        cost = None
        if result.llm is not None:
            cost = realised_cost(call.endpoints[result.llm], result.usage)
            if cost is None:  # tokens not reported (or malformed): the router's expected cost per query
                cost = call.expected_cost.get(result.llm)
            if cost is not None:
                self.metrics.observe_cost(result.llm, call.policy.key_id, cost)
            self.keys.settle(call.hold, cost or 0.0)
            self.metrics.observe_choice(result.llm, fallback=result.llm != call.order[0])
        else:
            self.keys.release(call.hold)
        if call.hold.remaining_usd is not None and result.stream is None:  # the hold's figure, settled: no query
            call.request.state.remaining_usd = call.hold.remaining_usd + call.hold.usd - (cost or 0.0)
        for attempt in result.attempts:
            self.metrics.observe_upstream(attempt.llm, attempt.seconds, attempt.error)
        state = call.request.state
        state.llm, state.attempts, state.cost_usd = result.llm, len(result.attempts), cost
        state.tried = result.tried
        chat, usage = call.chat, result.usage or {}
        self.decisions.record(
            {
                "request_id": state.request_id,
                "at": datetime.now(UTC),
                "key_id": call.policy.key_id,
                "prompt_hash": prompt_hash(chat.prompt) if chat.prompt else None,
                "router_version": call.router_version,
                "model_requested": chat.model,
                "chosen_llm": result.llm,
                "cost_weight": call.ranked["cost_weight"] if call.ranked else None,
                "budget_kind": call.bound.kind if call.bound else "none",  # what bounded it: the request's or key's
                "budget_value": call.bound.value if call.bound else None,
                "candidates": call.order,
                "predicted_error": call.ranked["predicted_error"] if call.ranked else None,
                "predicted_cost": call.ranked["cost"] if call.ranked else None,
                "attempts": [
                    {"llm": a.llm, "try": a.try_number, "status": a.status, "error": a.error, "seconds": a.seconds}
                    for a in result.attempts
                ],
                "status": status,
                "prompt_tokens": token_count(usage.get("prompt_tokens")),
                "completion_tokens": token_count(usage.get("completion_tokens")),
                "realised_cost_usd": cost,
                "latency_ms": (time.perf_counter() - call.started) * 1e3,
                "stream": chat.stream,
                **learning_fields(call.ranked),
                **call.choice.decision_fields(),
            }
        )
        return cost

    async def post_feedback(self, request: Request) -> Response:
        """``POST /v1/feedback``: one rating or a batch, each of a request of the asking key (403 for another key's,
        404 for an id the gateway never made), queued for the feedback log (all or none; 503 when it is full)."""
        policy: KeyPolicy = request.state.key
        body = await read_json(request)
        try:
            ratings = feedback.parse_feedback(body)
        except FeedbackError as exc:
            raise RequestError(400, str(exc), exc.param, "invalid_value") from None
        others = [k for k in self.keys.key_ids if k != policy.key_id]
        for rating in ratings:
            owner = self.request_ids.ownership(rating.request_id, policy.key_id, others)
            if owner is None:  # no MAC explains it: the decision files say (an id from before the secret changed)
                owner = await run_in_threadpool(self.owners.ownership, rating.request_id, policy.key_id)
            param, shown = f"{rating.where}request_id", short_repr(rating.request_id)
            if owner is Ownership.OTHER:
                message = f"{param}={shown}: not a request of key {policy.key_id!r}; a key rates only its own requests"
                raise RequestError(403, message, param, "permission_denied")
            if owner is Ownership.UNKNOWN:
                raise RequestError(404, f"{param}={shown}: no such request", param, "request_not_found")
        key_id = None if policy.key_id == ANONYMOUS_ID else policy.key_id
        records = [feedback.feedback_record(rating, key_id) for rating in ratings]
        if not self.feedback.record_all(records):
            message = "feedback: the gateway's feedback queue is full; retry shortly"
            return error_response(503, message, None, "feedback_unavailable", {"Retry-After": "1"})
        data = [
            {"id": r["feedback_id"], "object": "feedback", "request_id": r["request_id"], "score": r["score"]}
            for r in records
        ]
        return JSONResponse({"object": "list", "data": data} if "feedback" in body else data[0])

    async def models(self, request: Request) -> Response:
        router, policy = self.router, request.state.key
        names = self._pool(router, self.endpoints, policy) if router else []
        if policy.allows(ROUTED_MODEL):
            names = [ROUTED_MODEL, *names]
        created = int(self._catalog_mtime)
        data = [{"id": n, "object": "model", "created": created, "owned_by": "uniroute"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if self.router is None:
            return error_response(503, "not ready: no router loaded yet", None, "not_ready", {"Retry-After": "5"})
        return JSONResponse({"status": "ready", "router_version": self.router.version, "llms": self.router.pool()})

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI app of ``gateway`` (started and stopped with the server), its middleware outermost first."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
            Route("/v1/route", gateway.route, methods=["POST"]),
            Route("/v1/feedback", gateway.post_feedback, methods=["POST"]),
            Route("/v1/models", gateway.models, methods=["GET"]),
            Route("/health", gateway.health, methods=["GET"]),
            Route("/ready", gateway.ready, methods=["GET"]),
            Route("/metrics", gateway.prometheus, methods=["GET"]),
        ],
        middleware=[
            Middleware(ObservabilityMiddleware, metrics=gateway.metrics),
            Middleware(ErrorShapingMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=gateway.config.max_body_bytes),
            Middleware(AuthMiddleware, store=gateway.keys),
        ],
        exception_handlers={HTTPException: http_exception_handler},
        lifespan=lifespan,
    )


def app_from_environment() -> Starlette:
    """The app of one worker of ``uniroute serve --workers N`` (uvicorn's factory), configured by $CONFIG_ENV."""
    return create_app(Gateway(GatewayConfig.from_json(os.environ[CONFIG_ENV])))
