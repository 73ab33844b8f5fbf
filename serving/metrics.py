"""The gateway's Prometheus metrics (``/metrics``) and its access-log line.

Built on ``prometheus-client``. With ``--workers N`` every worker is a process with its own counters, and a scrape
reaches one of them; so when ``PROMETHEUS_MULTIPROC_DIR`` is set, every worker writes its values to memory-mapped
files there and :meth:`GatewayMetrics.render` adds up all workers' files (the client's multiprocess mode). Without
it, the values live in this process and are rendered from there. The directory must be empty when the gateway
starts (:func:`clear_multiprocess_dir`, before the workers are spawned) and the same for all of its workers.

Label values are ids (LLM names, key ids, HTTP statuses), never prompt text or keys; the model a client asked for
is free text, so it is cut to 64 characters.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["ACCESS_FIELDS", "GatewayMetrics", "ObservabilityMiddleware", "access_log_line", "clear_multiprocess_dir"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_MAX_LABEL = 64


def _multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def clear_multiprocess_dir(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Empty (creating) ``path`` or ``$PROMETHEUS_MULTIPROC_DIR`` before the workers start: files of an earlier run
    would be added to this one's. Returns the directory, or None when multiprocess mode is off."""
    directory = path or _multiproc_dir()
    if directory is None:
        return None
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def _label(value: object) -> str:
    text = "" if value is None else str(value)
    return text[:_MAX_LABEL]


def _status_class(status: int) -> str:
    return f"{int(status) // 100}xx" if 100 <= int(status) <= 599 else "other"


class GatewayMetrics:
    """The gateway's counters and histograms, kept in a registry of their own (several gateways in one process,
    as in the tests, do not collide); in multiprocess mode all workers' values are rendered."""

    def __init__(self) -> None:
        self._multiproc = _multiproc_dir()
        if self._multiproc and values.ValueClass is values.MutexValue:
            # prometheus-client picks where values live when it is first imported; the variable may have been set
            # after that (the CLI sets it before spawning workers, but may have imported this module already).
            values.ValueClass = values.get_value_class()
        self._lock = threading.Lock()
        self._dropped_seen: dict[str, int] = {}  # by log: the running total of dropped records last told
        self._registry = CollectorRegistry(auto_describe=True)
        r = self._registry
        self.requests = Counter(
            "uniroute_requests",
            "Requests answered, by HTTP status, model asked for and key id.",
            ["status", "model", "key_id"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "uniroute_request_duration_seconds",
            "Whole request latency, by HTTP status class.",
            ["status_class"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.routing_seconds = Histogram(
            "uniroute_routing_duration_seconds",
            "Time to route one prompt: embedding and choice.",
            buckets=ROUTING_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "uniroute_upstream_duration_seconds",
            "Time of one upstream attempt, by LLM (failed attempts included).",
            ["llm"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "uniroute_upstream_errors",
            "Failed upstream attempts, by LLM and kind (e.g. timeout, http_503, connection).",
            ["llm", "kind"],
            registry=r,
        )
        self.choices = Counter(
            "uniroute_choices", "Requests the router sent to each LLM first (its choice).", ["llm"], registry=r
        )
        self.fallbacks = Counter(
            "uniroute_fallbacks", "Requests sent on to each LLM after an earlier one failed.", ["llm"], registry=r
        )
        self.routed = Counter(
            "uniroute_routed",
            "Routed requests by the router version that served them and its alias (champion, or challenger: canary).",
            ["version", "alias"],
            registry=r,
        )
        self.route_queries = Counter(
            "uniroute_route_queries",
            "POST /v1/route explanations by the router version that ranked them and its alias (nothing served).",
            ["version", "alias"],
            registry=r,
        )
        self.shadow = Counter(
            "uniroute_shadow",
            "Shadow rankings of routed requests: agreed or disagreed with the served choice, failed, or "
            "skipped_embedder (the two versions' embedders differ).",
            ["outcome"],
            registry=r,
        )
        self.cost = Counter(
            "uniroute_cost_usd", "Realised cost in USD, by LLM and key id.", ["llm", "key_id"], registry=r
        )
        self.record_queue = Gauge(
            "uniroute_record_log_queue_depth",
            "Records waiting to be written, by log: decision, feedback, traffic (summed over live workers).",
            ["log"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.record_dropped = Counter(
            "uniroute_record_log_dropped",
            "Records dropped, by log (decision, feedback, traffic): queue full, closed, invalid, or unwritable.",
            ["log"],
            registry=r,
        )
        self.decision_queue = Gauge(
            "uniroute_decision_log_queue_depth",
            "Decision records waiting to be written (summed over live workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.decision_dropped = Counter(
            "uniroute_decision_log_dropped", "Decision records dropped: queue full, closed, or unwritable.", registry=r
        )

    # ---- what the gateway observes ---------------------------------------------------------------------------
    def observe_request(self, model: str, key_id: str, status: int, seconds: float) -> None:
        status_class = _status_class(status)
        self.requests.labels(str(int(status)), _label(model), _label(key_id)).inc()
        self.request_seconds.labels(status_class).observe(max(float(seconds), 0.0))

    def observe_routing(self, seconds: float) -> None:
        self.routing_seconds.observe(max(float(seconds), 0.0))

    def observe_upstream(self, llm: str, seconds: float, error: str | None) -> None:
        self.upstream_seconds.labels(_label(llm)).observe(max(float(seconds), 0.0))
        if error is not None:
            self.upstream_errors.labels(_label(llm), _label(error)).inc()

    def observe_choice(self, llm: str, fallback: bool) -> None:
        (self.fallbacks if fallback else self.choices).labels(_label(llm)).inc()

    def observe_version(self, version: str, alias: str) -> None:
        self.routed.labels(_label(version), _label(alias)).inc()

    def observe_route_query(self, version: str, alias: str) -> None:
        self.route_queries.labels(_label(version), _label(alias)).inc()

    def observe_shadow(self, outcome: str) -> None:
        self.shadow.labels(_label(outcome)).inc()

    def observe_cost(self, llm: str, key_id: str, usd: float) -> None:
        if usd is not None and float(usd) > 0:
            self.cost.labels(_label(llm), _label(key_id)).inc(float(usd))

    def set_queue(self, depth: int, dropped: int, log: str = "decision") -> None:
        """A record log's queue depth now and its total of dropped records so far (``RecordLog.depth``,
        ``RecordLog.dropped``; ``log`` is its kind): the counter grows by what was dropped since that log's last
        call. The decision log's values also go to the ``uniroute_decision_log_*`` metrics (named before the others
        were)."""
        depth, log = max(int(depth), 0), _label(log)
        with self._lock:
            seen = self._dropped_seen.get(log, 0)
            grown, self._dropped_seen[log] = int(dropped) - seen, max(int(dropped), seen)
        self.record_queue.labels(log).set(depth)
        dropped_counter = self.record_dropped.labels(log)  # shown from the first call on, at 0 until a drop
        if log == "decision":
            self.decision_queue.set(depth)
        if grown > 0:
            dropped_counter.inc(grown)
            if log == "decision":
                self.decision_dropped.inc(grown)

    # ---- exposition ------------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type (every worker's values in multiprocess mode)."""
        if self._multiproc:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._multiproc)
        else:
            registry = self._registry
        # the 0.0.4 text format is what generate_latest writes and every Prometheus parses (the client's own
        # handler answers with it too unless asked for another); CONTENT_TYPE_LATEST now names 1.0.0
        return prometheus_client.generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4

    def close(self) -> None:
        """At a worker's shutdown: its queue depth stops counting (multiprocess mode; counters are kept)."""
        if self._multiproc:
            multiprocess.mark_process_dead(os.getpid(), self._multiproc)


def _field(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    if not text or any(c in text for c in ' "=\\\n\r\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'
    return text


#: The access log's fields, in order; anything else passed is left out (prompt text, keys, headers never get in).
ACCESS_FIELDS = (
    "at",
    "request_id",
    "key_id",
    "method",
    "path",
    "status",
    "llm",
    "tried",
    "attempts",
    "latency_ms",
    "cost_usd",
)
_ALIASES = {"time": "at", "chosen_llm": "llm", "realised_cost_usd": "cost_usd", "realised_cost": "cost_usd"}


def access_log_line(**fields: object) -> str:
    """One logfmt line per request: ``at`` (UTC; default now), ``request_id``, ``key_id``, ``method``, ``path``
    (its query string cut: it may carry a key), ``status``, ``llm`` (or ``chosen_llm``: the one that answered),
    ``tried`` (the LLMs asked in order, the choice then its fallbacks: a list is joined by commas), ``attempts``,
    ``latency_ms``, ``cost_usd`` (or ``realised_cost_usd``). Missing ones print ``-``; any other field is left
    out, so prompt text and keys never reach the log.
    """
    given = {_ALIASES.get(k, k): v for k, v in fields.items()}
    at = given.get("at") or datetime.now(UTC)
    if isinstance(at, datetime):
        at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        given["at"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(given.get("path"), str):
        given["path"] = given["path"].split("?", 1)[0]
    if isinstance(given.get("tried"), list | tuple):
        given["tried"] = ",".join(map(str, given["tried"])) or None
    if given.get("latency_ms") is not None:
        given["latency_ms"] = f"{float(given['latency_ms']):.1f}"
    if given.get("cost_usd") is not None:
        given["cost_usd"] = f"{float(given['cost_usd']):.8f}"
    return " ".join(f"{name}={_field(given.get(name))}" for name in ACCESS_FIELDS)


class ObservabilityMiddleware:
    """Times every HTTP request, counts it in ``metrics`` and writes its access-log line (pure ASGI, so streamed
    responses pass unbuffered and are timed to their end). Outermost, so that it sees the status of every error
    the inner middleware shapes. It reads what the inner layers leave in ``scope["state"]``: ``request_id``
    (``ErrorShapingMiddleware``), ``key`` (``AuthMiddleware``), and the handler's ``model``, ``llm``,
    ``attempts`` and ``cost_usd``."""

    def __init__(self, app, metrics: GatewayMetrics, logger: logging.Logger | None = None) -> None:
        self.app, self.metrics = app, metrics
        self.log = logger or logging.getLogger("uniroute.access")

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # a response that never started: the server closes the connection

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            state = scope.get("state", {})
            key = state.get("key")
            key_id = getattr(key, "key_id", None)
            if scope.get("path") not in ("/metrics", "/health", "/ready"):  # probes and scrapes: not requests
                self.metrics.observe_request(state.get("model") or "-", key_id or "-", status, seconds)
            self.log.info(
                access_log_line(
                    request_id=state.get("request_id"),
                    key_id=key_id,
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    llm=state.get("llm"),
                    tried=state.get("tried"),
                    attempts=state.get("attempts"),
                    latency_ms=seconds * 1e3,
                    cost_usd=state.get("cost_usd"),
                )
            )
