"""The replay endpoint: an OpenAI-compatible server that answers with recorded LLM responses.

It serves any dataset with recorded answers (:class:`ReplayData`): a dataset read by its adapter and rendered as
the warehouse stores it (:func:`~profiling.datasets.prepare_prompts`), or prompts and responses already in frames
or in the warehouse. A prompt is identified by its text: the hash of its last user message maps to its stored id
(``<dataset>/<file id>``). A chat request is answered with the recorded ``response`` of (model, the prompt of its
last user message), after a configurable latency, unless a seeded fault (429, 500, 503, a hang, a truncated body,
a dropped connection) is drawn instead. Every request is counted per (model, prompt_id, outcome) and served at
``GET /_replay/stats`` and ``GET /_replay/requests``.

``stream=true`` is answered as OpenAI streams: server-sent events of ``chat.completion.chunk`` objects (the role,
the recorded answer in about eight pieces, ``stream_chunk_delay_ms`` apart, then the ``finish_reason``), a last
chunk with ``usage`` when ``stream_options.include_usage`` is true, then ``data: [DONE]``. Faults are drawn before
the first byte as for plain requests; ``truncated`` ends a stream cleanly after half its events (no ``[DONE]``),
``mid_stream_drop`` closes the connection after half of them (or half a plain body). Two faults send a 200 whose JSON
parses but is wrong, as real endpoints sometimes do: ``malformed_usage`` (the recorded answer with token counts that
are negative, not numbers, fractional or too large, or ``usage`` a string) and ``malformed_body`` (no text answer:
``choices`` missing or empty, no ``message``, ``content`` null or a number; a stream: chunks without ``choices``).

Used for offline demos, tests and load tests::

    with ReplayServer(data_dir, ReplayConfig(latency_ms=50)) as server:
        httpx.post(f"{server.base_url}/chat/completions", json={"model": ..., "messages": [...]})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import warehouse as wh
from profiling.datasets import get_adapter, prepare_prompts
from profiling.rendering import estimate_tokens
from router_core.embedding import prompt_hash

__all__ = [
    "MALFORMED_BODIES",
    "MALFORMED_USAGES",
    "OK",
    "SPREAD_KINDS",
    "FaultKind",
    "FaultRates",
    "RejectReason",
    "ReplayConfig",
    "ReplayData",
    "ReplayServer",
    "RequestLog",
    "create_app",
]

#: The outcome of a request answered with its recorded response.
OK = "ok"


class FaultKind(StrEnum):
    """An injected failure; its value is the outcome recorded in the request log."""

    RATE_LIMITED = "rate_limited"  # 429 with Retry-After, sent at once (no latency)
    SERVER_ERROR = "server_error"  # 500 after the latency
    UNAVAILABLE = "unavailable"  # 503 after the latency
    HANG = "hang"  # nothing for hang_seconds (or until the client gives up), then 504
    TRUNCATED = "truncated"  # 200 whose JSON body is cut in half (a stream: half its events, no [DONE])
    MID_STREAM_DROP = "mid_stream_drop"  # 200, half the body (or the stream's events), then the connection closes
    MALFORMED_USAGE = "malformed_usage"  # 200 with the answer, its usage malformed (a stream: its usage chunk)
    MALFORMED_BODY = "malformed_body"  # 200 with valid JSON holding no text answer (a stream: chunks without choices)


#: The kinds :meth:`FaultRates.spread` spreads a total rate over.
SPREAD_KINDS = (
    FaultKind.RATE_LIMITED,
    FaultKind.SERVER_ERROR,
    FaultKind.UNAVAILABLE,
    FaultKind.HANG,
    FaultKind.TRUNCATED,
)


class RejectReason(StrEnum):
    """Why a request was refused before any fault was drawn; also its recorded outcome and error code."""

    INVALID_REQUEST = "invalid_request"  # 400
    MODEL_NOT_FOUND = "model_not_found"  # 404
    PROMPT_NOT_FOUND = "prompt_not_found"  # 404
    RESPONSE_NOT_RECORDED = "response_not_recorded"  # 404: a known model that never answered this prompt


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault kind per valid request; the rest are answered (``OK``)."""

    rate_limited: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    hang: float = 0.0
    truncated: float = 0.0
    mid_stream_drop: float = 0.0
    malformed_usage: float = 0.0
    malformed_body: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            rate = getattr(self, f.name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {f.name}: {rate!r} is not in [0, 1]")
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"fault rates: they sum to {self.total!r}, more than 1")

    @classmethod
    def spread(cls, total_rate: float) -> FaultRates:
        """``total_rate`` split evenly over the kinds of :data:`SPREAD_KINDS` (``mid_stream_drop`` and the malformed
        kinds, added later, are left out so that a seeded spread draws what it always drew; set them by name)."""
        if not 0.0 <= total_rate <= 1.0:
            raise ValueError(f"fault_rate: {total_rate!r} is not in [0, 1]")
        return cls(**{kind.value: total_rate / len(SPREAD_KINDS) for kind in SPREAD_KINDS})

    @property
    def total(self) -> float:
        """Probability that a request gets any fault."""
        return sum(getattr(self, kind.value) for kind in FaultKind)

    def cumulative(self) -> list[tuple[float, FaultKind]]:
        """Upper bounds of each kind's slice of [0, 1), in ``FaultKind`` order, for one uniform draw."""
        bounds, upper = [], 0.0
        for kind in FaultKind:
            upper += getattr(self, kind.value)
            bounds.append((upper, kind))
        return bounds


@dataclass(frozen=True)
class ReplayConfig:
    """How the replay server behaves: latency, faults and their seeded draws."""

    #: Delay before every answer (and before 500, 503 and truncated bodies), in milliseconds.
    latency_ms: float = 0.0
    #: Per-model overrides of ``latency_ms``.
    model_latency_ms: dict[str, float] = field(default_factory=dict)
    faults: FaultRates = field(default_factory=FaultRates)
    #: Seed of the fault draws (``None``: fresh entropy); draws follow the order requests arrive in.
    seed: int | None = 0
    #: How long a hang lasts when the client does not give up first; choose it above the client's timeout.
    hang_seconds: float = 30.0
    #: The ``Retry-After`` header of a 429, in seconds.
    retry_after_seconds: int = 1
    #: Delay before each content piece of a stream, in milliseconds (the first byte comes after ``latency_ms``).
    stream_chunk_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms: {self.latency_ms!r} is negative")
        for model, ms in self.model_latency_ms.items():
            if ms < 0:
                raise ValueError(f"model_latency_ms[{model!r}]: {ms!r} is negative")
        if self.hang_seconds <= 0:
            raise ValueError(f"hang_seconds: {self.hang_seconds!r} is not positive")
        if self.retry_after_seconds < 0:
            raise ValueError(f"retry_after_seconds: {self.retry_after_seconds!r} is negative")
        if self.stream_chunk_delay_ms < 0:
            raise ValueError(f"stream_chunk_delay_ms: {self.stream_chunk_delay_ms!r} is negative")

    def latency_seconds(self, model: str) -> float:
        """The delay before ``model`` answers, in seconds."""
        return self.model_latency_ms.get(model, self.latency_ms) / 1000.0


@dataclass(frozen=True)
class ReplayData:
    """Recorded answers, indexed for lookup by prompt text.

    ``prompt_ids_by_hash`` maps ``prompt_hash(last user message)`` to the stored ids of the prompts whose last user
    message it is (several prompts may share a text, e.g. MMLU-Pro's duplicate questions); ``responses`` maps
    model -> prompt id -> response; ``models`` is the order ``GET /v1/models`` lists them in.
    """

    prompt_ids_by_hash: dict[str, tuple[str, ...]]
    responses: dict[str, dict[str, str]]
    models: tuple[str, ...]

    @classmethod
    def from_frames(
        cls, prompts: pl.DataFrame, responses: pl.DataFrame, models: Sequence[str] | None = None
    ) -> ReplayData:
        """Index ``prompts`` (``prompt_id`` and ``messages``, JSON chat messages, or ``prompt``, the user turn; a
        null ``messages`` falls back to ``prompt``) and ``responses`` (``model, prompt_id, response``; null
        responses skipped, responses to other prompts ignored). ``models``: default the sorted models answering."""
        _require_columns(prompts, "prompts", ("prompt_id",))
        if "messages" not in prompts.columns and "prompt" not in prompts.columns:
            raise ValueError(f"prompts: needs a 'messages' or a 'prompt' column (have {prompts.columns})")
        _require_columns(responses, "responses", ("model", "prompt_id", "response"))
        messages = prompts["messages"].to_list() if "messages" in prompts.columns else [None] * prompts.height
        texts = prompts["prompt"].to_list() if "prompt" in prompts.columns else [None] * prompts.height
        by_hash: dict[str, list[str]] = {}
        for prompt_id, chat, text in zip(prompts["prompt_id"].cast(pl.String).to_list(), messages, texts, strict=True):
            if prompt_id is None:
                raise ValueError("prompts: a prompt_id is null")
            by_hash.setdefault(prompt_hash(_last_user_text(prompt_id, chat, text)), []).append(prompt_id)
        prompt_ids_by_hash = {key: tuple(sorted(ids)) for key, ids in by_hash.items()}

        known = {prompt_id for ids in prompt_ids_by_hash.values() for prompt_id in ids}
        recorded = responses.select("model", pl.col("prompt_id").cast(pl.String), "response").filter(
            pl.col("response").is_not_null()
        )
        served = recorded.filter(pl.col("prompt_id").is_in(list(known)))
        if recorded.height and not served.height:
            example = recorded["prompt_id"][0]
            raise ValueError(
                f"responses: none of their {recorded.height} prompt ids is a prompt's (e.g. {example!r}; "
                f"prompts have ids like {next(iter(sorted(known)), None)!r})"
            )
        answers = {
            model: dict(zip(part["prompt_id"].to_list(), part["response"].to_list(), strict=True))
            for (model,), part in served.partition_by("model", as_dict=True, maintain_order=True).items()
        }
        order = tuple(dict.fromkeys(models)) if models is not None else tuple(sorted(answers))
        return cls(prompt_ids_by_hash=prompt_ids_by_hash, responses=answers, models=order)

    @classmethod
    def from_dataset(
        cls,
        path: str | os.PathLike[str],
        adapter: str | None = None,
        dataset: str | None = None,
        responses: str | os.PathLike[str] | None = None,
    ) -> ReplayData:
        """Read a dataset with its adapter, render it as the warehouse stores it, and serve its recorded answers.

        ``adapter``: default ``mmlu_pro`` for a directory holding ``questions.parquet``, else ``prompts`` (a prompt
        file). ``dataset``: the name prefixing stored ids (``<dataset>/<file id>``); default the adapter's name for
        a directory, the file's stem for a file. ``responses``: a Parquet/CSV/JSONL file of ``model, prompt_id,
        response`` (the file's ids); default the answers recorded with the dataset. Models are listed in the order
        of the directory's ``models.csv`` where it has one, then sorted.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"replay data: {path} not found")
        if adapter is None:
            adapter = "mmlu_pro" if (path / "questions.parquet").is_file() else "prompts"
        reader = get_adapter(adapter)
        if dataset is None:
            dataset = reader.name if path.is_dir() else path.stem
        rows, spec = reader.load(path)
        prompts = prepare_prompts(dataset, rows, spec)
        recorded = _read_responses(Path(responses)) if responses is not None else reader.recorded_responses(path)
        if recorded is None:
            raise ValueError(f"replay data: {adapter} dataset {path} has no recorded responses; pass responses=FILE")
        _require_columns(recorded, "responses", ("model", "prompt_id", "response"))
        recorded = recorded.with_columns(
            (pl.lit(f"{dataset}/") + pl.col("prompt_id").cast(pl.String)).alias("prompt_id")
        )
        answered = recorded.filter(pl.col("response").is_not_null())["model"].unique().sort().to_list()
        listed = path / "models.csv"
        if path.is_dir() and listed.is_file():
            order = pl.read_csv(listed, columns=["model"])["model"].to_list()
            models = (*order, *(m for m in answered if m not in order))
        else:
            models = answered
        return cls.from_frames(prompts, recorded, models)

    @classmethod
    def from_warehouse(
        cls, con: duckdb.DuckDBPyConnection, responses: pl.DataFrame, models: Sequence[str] | None = None
    ) -> ReplayData:
        """The warehouse's prompts (as sent: their stored messages) answered with ``responses`` (stored ids)."""
        return cls.from_frames(wh.read_prompts(con), responses, models)

    @property
    def n_prompts(self) -> int:
        return sum(len(ids) for ids in self.prompt_ids_by_hash.values())

    @property
    def n_responses(self) -> int:
        return sum(len(answers) for answers in self.responses.values())


def _require_columns(frame: pl.DataFrame, name: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing} (have {frame.columns})")


def _last_user_text(prompt_id: str, messages: str | None, prompt: str | None) -> str:
    """What identifies a prompt: its last user message (``messages``, JSON), else ``prompt``."""
    where = f"prompts: prompt_id={prompt_id!r}"
    if messages is None:
        if prompt is None:
            raise ValueError(f"{where}: neither messages nor prompt is given")
        return prompt
    try:
        chat = json.loads(messages)
    except ValueError:
        raise ValueError(f"{where}: messages={messages!r:.80}: not valid JSON") from None
    users = [m for m in chat if isinstance(m, dict) and m.get("role") == "user"] if isinstance(chat, list) else []
    if not users:
        raise ValueError(f"{where}: messages={messages!r:.80}: no message with role 'user'")
    try:
        return _message_text(users[-1].get("content"), "content")
    except _BadRequest as exc:
        raise ValueError(f"{where}: messages: {exc}") from None


def _read_responses(path: Path) -> pl.DataFrame:
    """A responses file: Parquet, CSV or JSONL with ``model, prompt_id, response`` (ids as in the prompt file)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"responses: {path} not found")
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix == ".csv":
        return pl.read_csv(path, infer_schema=False)  # ids and answers stay text ("007" is not 7)
    if suffix in (".jsonl", ".ndjson"):
        return pl.read_ndjson(path)
    raise ValueError(f"responses: {path}: unsupported format {suffix!r}; use .parquet, .csv or .jsonl")


class RequestLog:
    """Thread-safe counts of requests per (model, prompt_id, outcome); readable while the server runs."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str | None, str | None, str]] = Counter()
        self._lock = threading.Lock()

    def record(self, model: str | None, prompt_id: str | None, outcome: str) -> None:
        outcome = str(outcome)  # a plain str, also for FaultKind / RejectReason members
        with self._lock:
            self._counts[model, prompt_id, outcome] += 1

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def rows(self) -> list[dict[str, Any]]:
        """One row per (model, prompt_id, outcome) with its ``count``; model/prompt_id are None when unknown."""
        with self._lock:
            items = list(self._counts.items())
        return [
            {"model": model, "prompt_id": prompt_id, "outcome": outcome, "count": count}
            for (model, prompt_id, outcome), count in items
        ]

    def totals(self) -> dict[str, int]:
        """Number of requests per outcome."""
        totals: Counter[str] = Counter()
        for row in self.rows():
            totals[row["outcome"]] += row["count"]
        return dict(totals)

    def frame(self) -> pl.DataFrame:
        """:meth:`rows` as a frame: model, prompt_id (the stored id), outcome, count."""
        schema = {"model": pl.String, "prompt_id": pl.String, "outcome": pl.String, "count": pl.Int64}
        return pl.DataFrame(self.rows(), schema=schema)


class _BadRequest(Exception):
    """A malformed chat request; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class _ChatRequest:
    model: str
    prompt: str  # the last user message: what identifies the prompt
    prompt_tokens: int
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage


def _message_text(content: Any, param: str) -> str:
    """The text of a message's ``content``: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _BadRequest(f"{param}[{i}]: expected a text part, got {part!r:.80}", f"{param}[{i}]")
            texts.append(part["text"])
        return "".join(texts)
    raise _BadRequest(f"{param}: expected a string or a list of text parts, got {content!r:.80}", param)


def _parse_chat_request(raw: bytes) -> _ChatRequest:
    """Validate a ``/v1/chat/completions`` body; raise ``_BadRequest`` naming the first bad field."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"request body is not valid JSON: {exc}", None) from None
    if not isinstance(body, dict):
        raise _BadRequest(f"request body: expected a JSON object, got {type(body).__name__}", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest(f"model: expected a non-empty string, got {model!r:.80}", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _BadRequest(f"stream: expected a boolean, got {stream!r:.80}", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _BadRequest(f"stream_options: expected an object, got {options!r:.80}", "stream_options")
    include_usage = (options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        param = "stream_options.include_usage"
        raise _BadRequest(f"{param}: expected a boolean, got {include_usage!r:.80}", param)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(f"messages: expected a non-empty list of messages, got {messages!r:.80}", "messages")
    texts, prompt = [], None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _BadRequest(f"messages[{i}]: expected an object, got {message!r:.80}", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise _BadRequest(f"messages[{i}].role: expected a string, got {role!r:.80}", f"messages[{i}].role")
        text = _message_text(message.get("content"), f"messages[{i}].content")
        texts.append(text)
        if role == "user":
            prompt = text
    if prompt is None:
        raise _BadRequest("messages: no message with role 'user'", "messages")
    return _ChatRequest(
        model=model,
        prompt=prompt,
        prompt_tokens=estimate_tokens("\n".join(texts)),
        stream=bool(stream),
        include_usage=bool(include_usage),
    )


def _json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def _error(
    status_code: int,
    message: str,
    error_type: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return _json_response({"error": error}, status_code, headers)


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Replayer:
    """The state behind one app: data, config, the seeded fault draws and the request log."""

    def __init__(self, data: ReplayData, config: ReplayConfig) -> None:
        unknown = sorted(set(config.model_latency_ms) - set(data.models))
        if unknown:
            raise ValueError(f"model_latency_ms: unknown model(s) {unknown}; known: {list(data.models)}")
        self.data = data
        self.config = config
        self.log = RequestLog()
        self._known_models = frozenset(data.models)
        self._fault_bounds = config.faults.cumulative()
        self._any_faults = config.faults.total > 0
        self._rng = random.Random(config.seed)
        created = int(time.time())
        self.models_body = [{"id": m, "object": "model", "created": created, "owned_by": "replay"} for m in data.models]

    def reset(self) -> None:
        """Clear the request log and restart the fault draws from the seed."""
        self.log.reset()
        self._rng = random.Random(self.config.seed)

    def draw_fault(self) -> FaultKind | None:
        if not self._any_faults:
            return None
        u = self._rng.random()
        for upper, kind in self._fault_bounds:
            if u < upper:
                return kind
        return None

    async def chat_completion(self, request: Request) -> Response | _SSEResponse | _DroppedResponse:
        try:
            chat = _parse_chat_request(await request.body())
        except _BadRequest as exc:
            self.log.record(None, None, RejectReason.INVALID_REQUEST)
            return _error(400, str(exc), "invalid_request_error", RejectReason.INVALID_REQUEST, exc.param)
        model = chat.model
        if model not in self._known_models:
            self.log.record(model, None, RejectReason.MODEL_NOT_FOUND)
            message = f"The model {model!r} does not exist; known models: GET /v1/models"
            return _error(404, message, "invalid_request_error", RejectReason.MODEL_NOT_FOUND, "model")
        key = prompt_hash(chat.prompt)
        prompt_ids = self.data.prompt_ids_by_hash.get(key)
        if prompt_ids is None:
            self.log.record(model, None, RejectReason.PROMPT_NOT_FOUND)
            message = f"prompt not found: the last user message ({chat.prompt[:60]!r}, hash {key}) matches no prompt"
            return _error(404, message, "invalid_request_error", RejectReason.PROMPT_NOT_FOUND, "messages")
        answers = self.data.responses.get(model, {})
        prompt_id = next((pid for pid in prompt_ids if pid in answers), None)
        if prompt_id is None:
            self.log.record(model, prompt_ids[0], RejectReason.RESPONSE_NOT_RECORDED)
            message = f"model {model!r} has no recorded response to prompt {prompt_ids[0]!r} (hash {key})"
            return _error(404, message, "invalid_request_error", RejectReason.RESPONSE_NOT_RECORDED, "messages")

        fault = self.draw_fault()
        self.log.record(model, prompt_id, fault or OK)
        if fault is FaultKind.RATE_LIMITED:
            headers = {"Retry-After": str(self.config.retry_after_seconds)}
            message = f"injected fault: rate limit reached for {model}; retry after {self.config.retry_after_seconds} s"
            return _error(429, message, "requests", "rate_limit_exceeded", headers=headers)
        if fault is FaultKind.HANG:
            with contextlib.suppress(TimeoutError):  # timed out, or the client left first
                await asyncio.wait_for(_wait_for_disconnect(request), timeout=self.config.hang_seconds)
            return _error(504, "injected fault: the upstream hung", "server_error", "timeout")
        latency = self.config.latency_seconds(model)
        if latency > 0:
            await asyncio.sleep(latency)
        if fault is FaultKind.SERVER_ERROR:
            message = "injected fault: the server had an error while processing your request"
            return _error(500, message, "server_error", "internal_error")
        if fault is FaultKind.UNAVAILABLE:
            return _error(503, "injected fault: the engine is currently overloaded", "server_error", "unavailable")

        answer = answers[prompt_id]
        completion_tokens = estimate_tokens(answer)
        usage = {
            "prompt_tokens": chat.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": chat.prompt_tokens + completion_tokens,
        }
        # which malformation: drawn only with these faults, so other seeded runs draw what they always drew
        draw = self._rng.randrange(1 << 30) if fault in (FaultKind.MALFORMED_USAGE, FaultKind.MALFORMED_BODY) else 0
        if fault is FaultKind.MALFORMED_USAGE:
            usage = _malformed_usage(usage, draw)
        if chat.stream:
            if fault is FaultKind.MALFORMED_BODY:
                chunk = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "model": model}
                return _SSEResponse(
                    [(b"data: " + json.dumps(chunk).encode() + b"\n\n", 0.0), (b"data: [DONE]\n\n", 0.0)]
                )
            delay = self.config.stream_chunk_delay_ms / 1000.0
            events = _stream_events(model, answer, usage if chat.include_usage else None, delay)
            if fault in (FaultKind.TRUNCATED, FaultKind.MID_STREAM_DROP):
                return _SSEResponse(events[: len(events) // 2], drop=fault is FaultKind.MID_STREAM_DROP)
            return _SSEResponse(events)
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
            payload = _malformed_body(payload, draw)
        response = _json_response(payload)
        if fault is FaultKind.TRUNCATED:
            body = response.body[: len(response.body) // 2]
            return Response(body, status_code=200, media_type="application/json")
        if fault is FaultKind.MID_STREAM_DROP:
            return _DroppedResponse(response.body)
        return response


#: What ``malformed_usage`` puts in place of the true counts (one drawn per answer).
MALFORMED_USAGES: tuple[Any, ...] = (
    {"prompt_tokens": -1},
    {"prompt_tokens": "n/a"},
    {"completion_tokens": -1},
    {"completion_tokens": "n/a"},
    {"prompt_tokens": 1.5},
    {"completion_tokens": 2**40},
    "n/a",
)
#: The bodies ``malformed_body`` sends: each parses as JSON, none holds a text answer (one drawn per answer).
MALFORMED_BODIES = ("no_choices", "empty_choices", "no_message", "null_content", "number_content")


def _malformed_usage(usage: dict[str, int], draw: int) -> Any:
    variant = MALFORMED_USAGES[draw % len(MALFORMED_USAGES)]
    return {**usage, **variant} if isinstance(variant, dict) else variant


def _malformed_body(payload: dict[str, Any], draw: int) -> dict[str, Any]:
    variant = MALFORMED_BODIES[draw % len(MALFORMED_BODIES)]
    choice = payload["choices"][0]
    if variant == "no_choices":
        del payload["choices"]
    elif variant == "empty_choices":
        payload["choices"] = []
    elif variant == "no_message":
        del choice["message"]
    else:
        choice["message"]["content"] = None if variant == "null_content" else 42
    return payload


#: How many content pieces a streamed answer is split into (fewer for answers shorter than that).
STREAM_PIECES = 8


def _stream_events(
    model: str, answer: str, usage: dict[str, int] | None, delay_s: float = 0.0
) -> list[tuple[bytes, float]]:
    """The SSE events OpenAI streams for ``answer``, each with the delay before it (``delay_s`` before each content
    piece): the role, the content in pieces, the finish reason, the usage (when asked for; every other chunk then
    carries ``"usage": null``), ``[DONE]``."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = model
    extra = {"usage": None} if usage is not None else {}

    def chunk(delta: dict, finish_reason: str | None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice], **extra}

    size = max(1, -(-len(answer) // STREAM_PIECES))
    pieces = [chunk({"content": answer[i : i + size]}, None) for i in range(0, len(answer), size)]
    chunks = [(chunk({"role": "assistant", "content": ""}, None), 0.0), *((c, delay_s) for c in pieces)]
    chunks.append((chunk({}, "stop"), 0.0))
    if usage is not None:
        chunks.append(({**base, "choices": [], "usage": usage}, 0.0))
    events = [
        (b"data: " + json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n", d) for c, d in chunks
    ]
    return [*events, (b"data: [DONE]\n\n", 0.0)]


class _SSEResponse:
    """A ``text/event-stream`` response sending ``events`` (each after its delay); ``drop``: close the connection
    after the last one instead of ending the response."""

    def __init__(self, events: list[tuple[bytes, float]], drop: bool = False) -> None:
        self.events, self.drop = events, drop

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event, delay_s in self.events:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if not self.drop:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # dropped: returning with the response unfinished makes uvicorn close the connection mid-body


class _DroppedResponse:
    """A 200 JSON response whose connection closes after half of ``body`` (its Content-Length promises all)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})


def create_app(data: str | os.PathLike[str] | ReplayData, config: ReplayConfig | None = None) -> FastAPI:
    """The replay server's ASGI app over ``data`` (a dataset: see :meth:`ReplayData.from_dataset`; or data loaded).

    Routes: ``POST /v1/chat/completions``, ``GET /v1/models[/{model}]``; the request log at
    ``GET /_replay/stats`` (``{outcome: count}``), ``GET /_replay/requests`` (a list of
    ``{model, prompt_id, outcome, count}``), ``POST /_replay/reset``, and in process at ``app.state.request_log``.
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
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else None
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(exc.status_code, message, "invalid_request_error", code)

    # Plain Starlette routes (no FastAPI dependency solving): the hot path of load tests.
    app.add_route("/v1/chat/completions", replayer.chat_completion, methods=["POST"])

    async def list_models(request: Request) -> Response:
        return _json_response({"object": "list", "data": replayer.models_body})

    async def retrieve_model(request: Request) -> Response:
        model = request.path_params["model"]
        found = next((m for m in replayer.models_body if m["id"] == model), None)
        if found is None:
            message = f"The model {model!r} does not exist"
            return _error(404, message, "invalid_request_error", RejectReason.MODEL_NOT_FOUND, "model")
        return _json_response(found)

    async def stats(request: Request) -> Response:
        return _json_response(replayer.log.totals())

    async def requests(request: Request) -> Response:
        return _json_response(replayer.log.rows())

    async def reset(request: Request) -> Response:
        replayer.reset()
        return _json_response({"reset": True})

    app.add_route("/v1/models", list_models, methods=["GET"])
    app.add_route("/v1/models/{model:path}", retrieve_model, methods=["GET"])
    app.add_route("/_replay/stats", stats, methods=["GET"])
    app.add_route("/_replay/requests", requests, methods=["GET"])
    app.add_route("/_replay/reset", reset, methods=["POST"])
    return app


#: How the server runs under uvicorn, in a thread or from the CLI: fast loop and parser, no access log, and no
#: X-Forwarded-* headers to trust (loopback only).
UVICORN_SETTINGS = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "off",
    "access_log": False,
    "proxy_headers": False,
}


class ReplayServer:
    """A replay server on a background thread (uvicorn, uvloop, httptools) for tests and benchmarks.

    ``with ReplayServer(data_dir, config) as server:`` serves at ``server.base_url``
    (``http://127.0.0.1:PORT/v1``); ``port=0`` picks a free port. Exiting stops it; requests still hanging
    are cancelled after ``shutdown_timeout_s``.
    """

    def __init__(
        self,
        data: str | os.PathLike[str] | ReplayData,
        config: ReplayConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 30.0,
        shutdown_timeout_s: float = 1.0,
    ) -> None:
        self.app = create_app(data, config)
        self.request_log: RequestLog = self.app.state.request_log
        self.host = host
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ReplayServer: not started; use it as a context manager or call start()")
        return self._port

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:PORT`` (``/_replay/...`` lives here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def start(self) -> ReplayServer:
        """Start serving; return once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("ReplayServer: already started")
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self._requested_port,
            **UVICORN_SETTINGS,
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            timeout_graceful_shutdown=self._shutdown_timeout_s,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="replay-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ReplayServer: failed to start on {self.host}:{self._requested_port}")
            time.sleep(0.005)
        self._port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=self._shutdown_timeout_s + 10.0)
            if self._thread.is_alive():
                raise RuntimeError("ReplayServer: the server thread did not stop")
        self._server = self._thread = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
