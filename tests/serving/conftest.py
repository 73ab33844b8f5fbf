"""A router over the fixture's LLMs, registered in a real MLflow sqlite registry as uniroute @champion."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router_core import Embedder, KMeansClusterMap, UniRouter, save_router

PRICES = {"cheap": 0.1, "math-pro": 1.0, "generalist": 4.0}


def decision_of(root, request_id: str) -> dict:
    """The decision record of ``request_id`` under ``root/decisions``, once written (off the request path, within
    its flush interval)."""
    from serving.decisions import read_decisions

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = read_decisions(root / "decisions").filter(pl.col("request_id") == request_id)
        if found.height:
            return found.row(0, named=True)
        time.sleep(0.2)
    raise AssertionError(f"no decision recorded for request {request_id}")


def register_fixture_router(root, data_dir, llms: list[str], onnx_cache, embedder: Embedder | None = None) -> str:
    """Fit a K-means (K=3) router over ``llms`` on every fixture question, register it; returns the version."""
    from serving import registry

    questions = pl.read_parquet(data_dir / "questions.parquet")
    answers = pl.read_parquet(data_dir / "responses.parquet")
    embedder = embedder or Embedder(cache_dir=onnx_cache)
    x = embedder.embed(questions["question"].to_list())
    correct = [
        questions.join(answers.filter(pl.col("model") == m), on="question_id", how="left")["correct"] for m in llms
    ]
    errors = 1.0 - np.column_stack([c.to_numpy() for c in correct])
    router = UniRouter(KMeansClusterMap(n_clusters=3).fit(x)).fit_arrays(x, errors, llms, [PRICES[m] for m in llms])
    router_dir = save_router(router, root / f"router-{len(llms)}")
    registry.write_router_meta(router_dir, embedder, 0.0, router.predict_error(x), 1 - errors)
    experiment = registry.ensure_experiment("uniroute", root / "artifacts")
    return registry.register_router(router_dir, "uniroute", experiment, {}, {}, {}, {}, ["What is 2 + 2?"])


@pytest.fixture
def register_router(mmlu_like_dir, onnx_cache):
    """``register(root, llms) -> version``: another router over some fixture LLMs, registered (not promoted)."""
    return lambda root, llms: register_fixture_router(root, mmlu_like_dir, llms, onnx_cache)


@pytest.fixture(scope="session")
def prices() -> dict[str, float]:
    """USD per million tokens of the registered router's LLMs."""
    return dict(PRICES)


@pytest.fixture(scope="session")
def champion_registry(tmp_path_factory, build_once_per_run, mmlu_like_dir, onnx_cache) -> Path:
    """A sqlite registry (artifacts beside it) holding uniroute v1 @champion over the three fixture LLMs of PRICES,
    registered once per run. Read only: ``registry_uri`` copies it."""

    def build(root: Path) -> None:
        import mlflow

        from serving import registry

        registry.configure(f"sqlite:///{root / 'mlflow.db'}")
        try:
            version = register_fixture_router(root, mmlu_like_dir, list(PRICES), onnx_cache)
            registry.promote("uniroute", version, better=True)
        finally:
            mlflow.set_tracking_uri(None)

    return build_once_per_run(tmp_path_factory, "champion_registry", build)


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory, champion_registry):
    """The module's own copy of uniroute v1 @champion (the three fixture LLMs of PRICES), MLflow pointed at it."""
    import mlflow

    from serving import registry

    root = tmp_path_factory.mktemp("serving") / "registry"
    shutil.copytree(champion_registry, root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry.configure(uri)  # re-roots the copy's artifact URIs
    yield uri
    mlflow.set_tracking_uri(None)


def write_gateway_catalog(path, base_url: str, prices: dict[str, float], extra: dict[str, str] | None = None) -> None:
    """A catalog of ``prices``' LLMs at ``base_url``; ``extra`` adds YAML flow fields per LLM (e.g. a dead URL)."""
    extra = extra or {}
    entries = [
        f"  - {{name: {m}, usd_per_mtok_in: {p}, usd_per_mtok_out: {p}{', ' + extra[m] if m in extra else ''}}}"
        for m, p in prices.items()
    ]
    path.write_text(f"defaults: {{base_url: '{base_url}'}}\nllms:\n" + "\n".join(entries) + "\n")


@contextlib.contextmanager
def gateway_process(root, catalog, registry_uri: str, *args: str, env: dict[str, str] | None = None):
    """``uniroute serve`` as its own process on 127.0.0.1 (decisions, feedback, traffic and key ledger under ``root``);
    yields its URL once ``/ready``; stopped with SIGTERM (a graceful shutdown) on exit."""
    from serving.processes import free_port, server_process, venv_env

    port = free_port()
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--catalog", str(catalog)]
    command += ["--tracking-uri", registry_uri, "--decisions-dir", str(root / "decisions")]
    command += ["--ledger", str(root / "ledger.sqlite"), "--traffic-dir", str(root / "traffic")]
    command += ["--feedback-dir", str(root / "feedback"), *args]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/ready", root / "gateway.log", venv_env(**(env or {}))):
        yield url


@contextlib.contextmanager
def gateway_in_process(root, catalog, registry_uri: str, reload_interval_s: float = 0.5, **settings):
    """The gateway app on uvicorn on a thread of this process (so the test sees its embedder calls); yields
    (URL, Gateway) once started; decisions are written when it stops (its lifespan's end)."""
    from serving.gateway import Gateway, create_app
    from serving.gateway_config import GatewayConfig

    config = GatewayConfig(
        catalog_path=str(catalog),
        tracking_uri=registry_uri,
        reload_interval_s=reload_interval_s,
        decisions_dir=str(root / "decisions"),
        ledger_path=str(root / "ledger.sqlite"),
        feedback_dir=str(root / "feedback"),
        **settings,
    )
    gateway = Gateway(config)
    with uvicorn_thread(create_app(gateway), startup_s=120, shutdown_s=60) as port:
        yield f"http://127.0.0.1:{port}", gateway


@contextlib.contextmanager
def uvicorn_thread(app, startup_s: float, shutdown_s: float, **settings):
    """``app`` served by uvicorn on a thread of this process at 127.0.0.1 (a free port), as the gateway is served;
    yields the port once started (``settings``: more ``uvicorn.Config`` options)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="warning", **settings)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.005)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=shutdown_s)


def samples(body: bytes) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def post_at_once(url: str, secret: str, bodies: list[dict]) -> list[tuple[int, dict, str]]:
    """(status, headers, text) of every chat-completions body, all in flight at once with client key ``secret``."""
    import aiohttp

    headers = {"Authorization": f"Bearer {secret}"}

    async def one(session: aiohttp.ClientSession, body: dict) -> tuple[int, dict, str]:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            return response.status, dict(response.headers), await response.text()

    async def every() -> list[tuple[int, dict, str]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await asyncio.gather(*(one(session, body) for body in bodies))

    return asyncio.run(every())
