"""An OpenAI-compatible routing gateway: ``POST /v1/chat/completions`` with ``model="uniroute"`` routes the
request with the champion router and forwards it to the chosen LLM's endpoint from the catalog.

- The answer is the endpoint's own JSON plus a ``uniroute`` field (LLM, router version, cost weight); headers
  ``X-UniRoute-LLM`` and ``X-UniRoute-Router-Version`` name them too. ``model=<catalog name>`` skips routing.
- Routing options ride in the request body beside OpenAI's fields: ``cost_weight``, ``max_cost_per_query``,
  ``min_accuracy`` (budgets, as in the pyfunc) and ``candidates``; they are not forwarded.
- A background task polls the registry: when the alias (``champion``) moves, the new version is loaded on a
  thread and swapped in; requests in flight finish on the router they started with, none is dropped. The
  catalog file is re-read when it changes; only its active LLMs are routed to.
- API keys come from the environment variable each catalog entry names, at request time, and are never
  logged or returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import polars as pl
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import warehouse as wh
from serving.batching import EmbeddingBatcher
from serving.chat_request import ROUTED_MODEL, ChatRequestError, parse_chat_request

log = logging.getLogger(__name__)


@dataclass
class LoadedRouter:
    """One registry version's pyfunc (router_core router + embedder), ready to route; concurrent requests'
    prompts are embedded together (:class:`serving.batching.EmbeddingBatcher`)."""

    version: str
    model: object  # serving.pyfunc.UniRoutePyfunc
    embed_batch: int = 32
    batcher: EmbeddingBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = EmbeddingBatcher(self.model.embedder.embed, self.embed_batch)

    def pool(self) -> list[str]:
        """The LLMs this version routes among."""
        return [row["llm"] for row in self.model.pool()]

    async def rank(self, prompt: str, params: dict) -> dict:
        """The candidates best first, the cost weight, each candidate's predicted error and cost."""
        vector = await self.batcher.embed(prompt)
        return self.model.rank(prompt, vector, params)


def _split_uri(model_uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` -> (name, alias)."""
    name, sep, alias = model_uri.removeprefix("models:/").partition("@")
    if not model_uri.startswith("models:/") or not sep or not name or not alias:
        raise ValueError(f"model_uri={model_uri!r}: expected models:/<name>@<alias>, e.g. models:/uniroute@champion")
    return name, alias


def load_router(model_uri: str, embed_batch: int = 32) -> LoadedRouter:
    """Resolve the alias to a version and load that version (so the version served is the one recorded)."""
    import mlflow

    name, alias = _split_uri(model_uri)
    version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    return LoadedRouter(version=version, model=model, embed_batch=embed_batch)


class Gateway:
    """State of one gateway process: the router served, the catalog, and an HTTP session to the endpoints."""

    def __init__(
        self,
        model_uri: str,
        catalog_path: str | os.PathLike[str],
        reload_interval_s: float = 30.0,
        embed_batch: int = 32,
    ) -> None:
        _split_uri(model_uri)
        self.embed_batch = embed_batch
        self.model_uri = model_uri
        self.catalog_path = Path(catalog_path)
        self.reload_interval_s = reload_interval_s
        self.router: LoadedRouter | None = None
        self.endpoints: dict[str, dict] = {}
        self._catalog_mtime = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task | None = None

    # ---- lifecycle ----
    async def start(self) -> None:
        self.reload_catalog()
        self.router = await run_in_threadpool(load_router, self.model_uri, self.embed_batch)
        log.info("serving %s version %s", self.model_uri, self.router.version)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, limit_per_host=0))
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._session:
            await self._session.close()

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
        """Swap in the alias's new version when it moves; re-read a changed catalog."""
        import mlflow

        name, alias = _split_uri(self.model_uri)
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                self.reload_catalog()
                current = await run_in_threadpool(lambda: mlflow.MlflowClient().get_model_version_by_alias(name, alias))
                if str(current.version) != self.router.version:
                    started = time.perf_counter()
                    self.router = await run_in_threadpool(load_router, self.model_uri, self.embed_batch)
                    log.info(
                        "%s moved: now version %s (%.1f s)",
                        self.model_uri,
                        self.router.version,
                        time.perf_counter() - started,
                    )
            except Exception:  # the registry may be briefly unreachable: keep serving, try again
                log.exception("reload check failed; still serving version %s", self.router.version)

    # ---- requests ----
    async def chat_completions(self, request: Request) -> Response:
        try:
            chat = parse_chat_request(json.loads(await request.body()))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # not JSON, invalid UTF-8, too deep
            if isinstance(exc, ChatRequestError):
                return _error(400, str(exc), exc.param, exc.code)
            return _error(400, f"request body: not valid JSON ({type(exc).__name__})", "body")
        if chat.stream:
            return _error(400, "stream=true: not supported by the gateway yet; send stream=false", "stream")
        router = self.router  # this request finishes on this version even if a reload swaps it meanwhile
        cost_weight = None
        if chat.routed:
            pool = [m for m in router.pool() if m in self.endpoints]
            if not pool:
                return _error(503, f"no LLM of router version {router.version} is active in the catalog", "model")
            candidates = chat.candidates or pool
            unknown = [c for c in candidates if c not in pool]
            if unknown:
                return _error(
                    400, f"candidates: {unknown[0]!r} is not an active LLM of the router's pool {pool}", "candidates"
                )
            params = {"candidates": candidates}  # a budget resolves on the curve of exactly these LLMs
            for name in ("cost_weight", "max_cost_per_query", "min_accuracy"):
                if getattr(chat, name) is not None:
                    params[name] = getattr(chat, name)
            try:
                ranked = await router.rank(chat.prompt, params)
            except ValueError as exc:  # names the field and value (e.g. an impossible budget)
                return _error(400, str(exc), chat.budget[0] if chat.budget else "messages")
            llm, cost_weight = ranked["order"][0], ranked["cost_weight"]
        elif chat.model in self.endpoints:
            llm = chat.model
        else:
            return _error(
                404, f"model={chat.model!r}: not {ROUTED_MODEL!r} nor an active catalog LLM", "model", "model_not_found"
            )
        return await self._forward(llm, chat.forward, router.version, cost_weight)

    async def _forward(self, llm: str, body: dict, version: str, cost_weight: float | None) -> Response:
        endpoint = self.endpoints[llm]
        headers = {"X-UniRoute-LLM": llm, "X-UniRoute-Router-Version": version}
        upstream_headers = {}
        if endpoint["api_key_env"]:
            key = os.environ.get(endpoint["api_key_env"])
            if not key:
                return _error(
                    502, f"llm {llm!r}: api_key_env {endpoint['api_key_env']} is not set", "llm", headers=headers
                )
            upstream_headers["Authorization"] = f"Bearer {key}"
        url = endpoint["base_url"].rstrip("/") + "/chat/completions"
        try:
            async with self._session.post(
                url, json={**body, "model": endpoint["model_id"]}, headers=upstream_headers
            ) as up:
                status, raw = up.status, await up.read()
        except aiohttp.ClientError as exc:
            return _error(502, f"llm {llm!r}: endpoint unreachable ({type(exc).__name__})", "llm", headers=headers)
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError:
            return Response(raw, status_code=status, headers=headers, media_type="application/json")
        if isinstance(payload, dict):
            payload["uniroute"] = {"llm": llm, "router_version": version, "cost_weight": cost_weight}
        return JSONResponse(payload, status_code=status, headers=headers)

    async def models(self, request: Request) -> Response:
        pool = self.router.pool() if self.router else []
        names = [ROUTED_MODEL, *(m for m in self.endpoints if m in pool)]  # what this gateway can route to
        created = int(self._catalog_mtime)
        data = [{"id": n, "object": "model", "created": created, "owned_by": "uniroute"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "router_version": self.router.version if self.router else None})


def _error(
    status: int, message: str, param: str | None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    """An OpenAI-style error body."""
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers)


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI app of ``gateway`` (started and stopped with the server)."""

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
            Route("/v1/models", gateway.models, methods=["GET"]),
            Route("/health", gateway.health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
