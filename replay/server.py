"""The replay endpoint in process: a uvicorn server on a background thread, for tests, benchmarks and the demo::

with ReplayServer(data_dir, ReplayConfig(latency_ms=50)) as server:
    httpx.post(f"{server.base_url}/chat/completions", json={"model": ..., "messages": [...]})
"""

from __future__ import annotations

import os
import threading
import time

import uvicorn

from replay.app import RequestLog, create_app
from replay.data import ReplayData
from replay.faults import ReplayConfig

__all__ = ["UVICORN_SETTINGS", "ReplayServer"]


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
