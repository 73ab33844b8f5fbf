"""The replay endpoint's HTTP app: an OpenAI-compatible server answering with recorded LLM responses.

A chat request is answered with the recorded ``response`` of (model, the prompt of its last user message; see
:class:`~replay.data.ReplayData`), after a configurable latency, unless a seeded fault (:mod:`replay.faults`: 429,
500, 503, a hang, a truncated body, a dropped connection) is drawn instead. Every request is counted per (model,
prompt_id, outcome, served_by) in the :class:`RequestLog`, served at ``GET /_replay/stats`` and
``GET /_replay/requests``. Substitution rules (:mod:`replay.substitution`) make a model silently serve another's
recorded answers for one category; the replay judge (:mod:`replay.judge`) answers ``llm_judge``'s requests.

``stream=true`` is answered as OpenAI streams: server-sent events of ``chat.completion.chunk`` objects (the role,
the recorded answer in about eight pieces, ``stream_chunk_delay_ms`` apart, then the ``finish_reason``), a last
chunk with ``usage`` when ``stream_options.include_usage`` is true, then ``data: [DONE]``. Faults are drawn before
the first byte as for plain requests; ``truncated`` ends a stream cleanly after half its events (no ``[DONE]``),
``mid_stream_drop`` closes the connection after half of them (or half a plain body). Two faults send a 200 whose JSON
parses but is wrong, as real endpoints sometimes do: ``malformed_usage`` (the recorded answer with token counts that
are negative, not numbers, fractional or too large, or ``usage`` a string) and ``malformed_body`` (no text answer:
``choices`` missing or empty, no ``message``, ``content`` null or a number; a stream: chunks without ``choices``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import threading
import time
import uuid
from collections import Counter
from enum import StrEnum
from typing import Any

import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from profiling.rendering import estimate_tokens
from replay.data import ReplayData
from replay.faults import FaultDraws, FaultKind, ReplayConfig, malformed_body, malformed_usage
from replay.judge import JudgeRefusal, ReplayJudge
from replay.protocol import (
    BadRequest,
    ChatRequest,
    DroppedResponse,
    SSEResponse,
    error_response,
    json_response,
    parse_chat_request,
    stream_events,
    wait_for_disconnect,
)
from replay.substitution import Substitutions, parse_substitution
from router_core.embedding import prompt_hash

__all__ = ["OK", "RejectReason", "RequestLog", "create_app"]

#: The outcome of a request answered with its recorded response.
OK = "ok"


class RejectReason(StrEnum):
    """Why a request was refused before any fault was drawn; also its recorded outcome and error code."""

    INVALID_REQUEST = "invalid_request"  # 400
    MODEL_NOT_FOUND = "model_not_found"  # 404
    PROMPT_NOT_FOUND = "prompt_not_found"  # 404
    RESPONSE_NOT_RECORDED = "response_not_recorded"  # 404: a known model that never answered this prompt


class RequestLog:
    """Thread-safe counts of requests per (model, prompt_id, outcome, served_by); readable while the server runs.

    ``served_by`` is the model whose recorded answer the request got (or would have got, had no fault struck):
    ``model`` itself, another model under a substitution rule, None when the request was refused.
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[str | None, str | None, str, str | None]] = Counter()
        self._lock = threading.Lock()

    def record(self, model: str | None, prompt_id: str | None, outcome: str, served_by: str | None = None) -> None:
        outcome = str(outcome)  # a plain str, also for FaultKind / RejectReason members
        with self._lock:
            self._counts[model, prompt_id, outcome, served_by] += 1

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def rows(self) -> list[dict[str, Any]]:
        """One row per (model, prompt_id, outcome, served_by) with its ``count``; model/prompt_id/served_by are
        None when unknown."""
        with self._lock:
            items = list(self._counts.items())
        return [
            {"model": model, "prompt_id": prompt_id, "outcome": outcome, "served_by": served_by, "count": count}
            for (model, prompt_id, outcome, served_by), count in items
        ]

    def totals(self) -> dict[str, int]:
        """Number of requests per outcome."""
        totals: Counter[str] = Counter()
        for row in self.rows():
            totals[row["outcome"]] += row["count"]
        return dict(totals)

    def frame(self) -> pl.DataFrame:
        """:meth:`rows` as a frame: model, prompt_id (the stored id), outcome, served_by, count."""
        schema = {"model": pl.String, "prompt_id": pl.String, "outcome": pl.String, "served_by": pl.String}
        schema["count"] = pl.Int64
        return pl.DataFrame(self.rows(), schema=schema)


class _Replayer:
    """The state behind one app: data, config, the seeded fault draws, substitutions, the judge, the request log."""

    def __init__(self, data: ReplayData, config: ReplayConfig) -> None:
        self.judge = ReplayJudge(data, config.judge) if config.judge is not None else None
        models = (*data.models, config.judge.model) if config.judge is not None else data.models
        unknown = sorted(set(config.model_latency_ms) - set(models))
        if unknown:
            raise ValueError(f"model_latency_ms: unknown model(s) {unknown}; known: {list(models)}")
        self.data = data
        self.config = config
        self.log = RequestLog()
        try:
            self.substitutions = Substitutions(data, config.substitutions)
        except BadRequest as exc:
            raise ValueError(f"substitutions: {exc}") from None
        self._known_models = frozenset(data.models)
        self.draws = FaultDraws(config.faults, config.seed)
        created = int(time.time())
        self.models_body = [{"id": m, "object": "model", "created": created, "owned_by": "replay"} for m in models]

    def reset(self) -> None:
        """Clear the request log, restart the fault draws from the seed and restore the substitutions of the start."""
        self.log.reset()
        self.draws.reset()
        self.substitutions.reset()

    async def _judged(self, chat: ChatRequest) -> Response | tuple[str, str, str]:
        """(prompt id, verdict, judge) for a request to the judge, or its refusal (recorded)."""
        assert self.judge is not None
        try:
            prompt_id, verdict = await asyncio.to_thread(self.judge.verdict, chat.prompt)
        except JudgeRefusal as exc:
            self.log.record(chat.model, None, exc.code)
            return error_response(exc.status, str(exc), "invalid_request_error", exc.code, "messages")
        return prompt_id, verdict, chat.model

    def _recorded(self, chat: ChatRequest) -> Response | tuple[str, str, str]:
        """(prompt id, answer, whose answer it is) for a request to a data model, or its refusal (recorded)."""
        model = chat.model
        if model not in self._known_models:
            self.log.record(model, None, RejectReason.MODEL_NOT_FOUND)
            message = f"The model {model!r} does not exist; known models: GET /v1/models"
            return error_response(404, message, "invalid_request_error", RejectReason.MODEL_NOT_FOUND, "model")
        key = prompt_hash(chat.prompt)
        prompt_ids = self.data.prompt_ids_by_hash.get(key)
        if prompt_ids is None:
            self.log.record(model, None, RejectReason.PROMPT_NOT_FOUND)
            message = f"prompt not found: the last user message ({chat.prompt[:60]!r}, hash {key}) matches no prompt"
            return error_response(404, message, "invalid_request_error", RejectReason.PROMPT_NOT_FOUND, "messages")
        answers = self.data.responses.get(model, {})
        prompt_id = next((pid for pid in prompt_ids if pid in answers), None)
        if prompt_id is None:
            self.log.record(model, prompt_ids[0], RejectReason.RESPONSE_NOT_RECORDED)
            message = f"model {model!r} has no recorded response to prompt {prompt_ids[0]!r} (hash {key})"
            return error_response(404, message, "invalid_request_error", RejectReason.RESPONSE_NOT_RECORDED, "messages")
        return prompt_id, *self.substitutions.answer(model, prompt_id)

    async def chat_completion(self, request: Request) -> Response | SSEResponse | DroppedResponse:
        try:
            chat = parse_chat_request(await request.body())
        except BadRequest as exc:
            self.log.record(None, None, RejectReason.INVALID_REQUEST)
            return error_response(400, str(exc), "invalid_request_error", RejectReason.INVALID_REQUEST, exc.param)
        model = chat.model
        judged = self.judge is not None and model == self.judge.config.model
        found = await self._judged(chat) if judged else self._recorded(chat)
        if not isinstance(found, tuple):
            return found
        prompt_id, answer, served_by = found

        fault = self.draws.fault()
        self.log.record(model, prompt_id, fault or OK, served_by)
        if fault is FaultKind.RATE_LIMITED:
            headers = {"Retry-After": str(self.config.retry_after_seconds)}
            message = f"injected fault: rate limit reached for {model}; retry after {self.config.retry_after_seconds} s"
            return error_response(429, message, "requests", "rate_limit_exceeded", headers=headers)
        if fault is FaultKind.HANG:
            with contextlib.suppress(TimeoutError):  # timed out, or the client left first
                await asyncio.wait_for(wait_for_disconnect(request), timeout=self.config.hang_seconds)
            return error_response(504, "injected fault: the upstream hung", "server_error", "timeout")
        latency = self.config.latency_seconds(model)
        if latency > 0:
            await asyncio.sleep(latency)
        if fault is FaultKind.SERVER_ERROR:
            message = "injected fault: the server had an error while processing your request"
            return error_response(500, message, "server_error", "internal_error")
        if fault is FaultKind.UNAVAILABLE:
            return error_response(
                503, "injected fault: the engine is currently overloaded", "server_error", "unavailable"
            )

        completion_tokens = estimate_tokens(answer)
        usage = {
            "prompt_tokens": chat.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": chat.prompt_tokens + completion_tokens,
        }
        draw = self.draws.variant(fault)
        if fault is FaultKind.MALFORMED_USAGE:
            usage = malformed_usage(usage, draw)
        if chat.stream:
            if fault is FaultKind.MALFORMED_BODY:
                chunk = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "model": model}
                return SSEResponse(
                    [(b"data: " + json.dumps(chunk).encode() + b"\n\n", 0.0), (b"data: [DONE]\n\n", 0.0)]
                )
            delay = self.config.stream_chunk_delay_ms / 1000.0
            events = stream_events(model, answer, usage if chat.include_usage else None, delay)
            if fault in (FaultKind.TRUNCATED, FaultKind.MID_STREAM_DROP):
                return SSEResponse(events[: len(events) // 2], drop=fault is FaultKind.MID_STREAM_DROP)
            return SSEResponse(events)
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        if fault is FaultKind.MALFORMED_BODY:
            payload = malformed_body(payload, draw)
        response = json_response(payload)
        if fault is FaultKind.TRUNCATED:
            body = response.body[: len(response.body) // 2]
            return Response(body, status_code=200, media_type="application/json")
        if fault is FaultKind.MID_STREAM_DROP:
            return DroppedResponse(response.body)
        return response


def create_app(data: str | os.PathLike[str] | ReplayData, config: ReplayConfig | None = None) -> FastAPI:
    """The replay server's ASGI app over ``data`` (a dataset: see :meth:`ReplayData.from_dataset`; or data loaded).

    Routes: ``POST /v1/chat/completions``, ``GET /v1/models[/{model}]``; the request log at
    ``GET /_replay/stats`` (``{outcome: count}``), ``GET /_replay/requests`` (a list of
    ``{model, prompt_id, outcome, served_by, count}``), ``POST /_replay/reset``, and in process at
    ``app.state.request_log``; the substitution rules at ``/_replay/substitutions`` (:func:`_substitution_routes`).
    """
    replay_data = data if isinstance(data, ReplayData) else ReplayData.from_dataset(data)
    replayer = _Replayer(replay_data, config or ReplayConfig())
    app = FastAPI(
        title="UniRoute replay server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # a test double: no OpenTelemetry spans or metrics, and no per-request check for a configured provider
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.request_log = replayer.log

    @app.exception_handler(StarletteHTTPException)
    async def httperror_response(request: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else None
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, message, "invalid_request_error", code)

    # Plain Starlette routes (no FastAPI dependency solving): the hot path of load tests.
    app.add_route("/v1/chat/completions", replayer.chat_completion, methods=["POST"])

    async def list_models(request: Request) -> Response:
        return json_response({"object": "list", "data": replayer.models_body})

    async def retrieve_model(request: Request) -> Response:
        model = request.path_params["model"]
        found = next((m for m in replayer.models_body if m["id"] == model), None)
        if found is None:
            message = f"The model {model!r} does not exist"
            return error_response(404, message, "invalid_request_error", RejectReason.MODEL_NOT_FOUND, "model")
        return json_response(found)

    async def stats(request: Request) -> Response:
        return json_response(replayer.log.totals())

    async def requests(request: Request) -> Response:
        return json_response(replayer.log.rows())

    async def reset(request: Request) -> Response:
        replayer.reset()
        return json_response({"reset": True})

    app.add_route("/v1/models", list_models, methods=["GET"])
    app.add_route("/v1/models/{model:path}", retrieve_model, methods=["GET"])
    app.add_route("/_replay/stats", stats, methods=["GET"])
    app.add_route("/_replay/requests", requests, methods=["GET"])
    app.add_route("/_replay/reset", reset, methods=["POST"])
    _substitution_routes(app, replayer.substitutions)
    return app


def _substitution_routes(app: FastAPI, substitutions: Substitutions) -> None:
    """``GET /_replay/substitutions``: the rules in force; ``POST`` ``{model, category, served_by}``: put one in
    force (replacing that model and category's); ``DELETE``: lift them all, or with ``?model=&category=`` one (404
    when there is none). Each answers ``{"substitutions": [...]}``; bad input is a 400 naming the field; only
    loopback clients may change rules (403)."""

    def listing() -> Response:
        return json_response({"substitutions": substitutions.rows()})

    def refused(exc: BadRequest) -> Response:
        return error_response(400, str(exc), "invalid_request_error", "invalid_substitution", exc.param)

    async def routes(request: Request) -> Response:
        if request.method == "GET":
            return listing()
        host = request.client.host if request.client else ""
        if not _is_loopback(host):
            message = f"{request.method} {request.url.path}: only loopback clients may change substitutions"
            return error_response(403, message, "invalid_request_error", "forbidden")
        try:
            if request.method == "POST":
                try:
                    body = json.loads(await request.body())
                except ValueError as exc:
                    raise BadRequest(f"request body is not valid JSON: {exc}", None) from None
                substitutions.add(parse_substitution(body))
                return listing()
            query = dict(request.query_params)
            if not query:
                substitutions.clear()
                return listing()
            rule = parse_substitution(query, require_served_by=False)
        except BadRequest as exc:
            return refused(exc)
        if not substitutions.remove(rule.model, rule.category):
            message = f"no substitution for model={rule.model!r}, category={rule.category!r}"
            return error_response(404, message, "invalid_request_error", "not_found", "category")
        return listing()

    app.add_route("/_replay/substitutions", routes, methods=["GET", "POST", "DELETE"])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
