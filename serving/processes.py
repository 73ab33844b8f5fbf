"""Run a server as a child process the way an operator would, and stop it cleanly: its own session (so SIGTERM
reaches every process it starts), ready once an HTTP URL answers 200, its output kept in a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_env(**extra: str) -> dict[str, str]:
    """This environment with the interpreter's bin directory first on PATH, as in an activated ``.venv``."""
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}", **extra}


@contextmanager
def server_process(
    command: Sequence[str], ready_url: str, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 120
) -> Iterator[subprocess.Popen]:
    """Start ``command``, wait until ``ready_url`` answers 200, yield the process; stop its whole session on exit.

    Raises ``RuntimeError`` with the log's tail when it exits early or is not ready within ``timeout_s``.
    """
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            list(command), env=env or venv_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not _answers(ready_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    state = (
                        f"exited {process.returncode}" if process.poll() is not None else f"not ready in {timeout_s} s"
                    )
                    raise RuntimeError(f"{command[:4]}: {state}; log tail:\n{Path(log_path).read_text()[-3000:]}")
                time.sleep(0.2)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):  # the whole session: children too
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urlopen(url, timeout=1) as response:
            return response.status == 200
    except (URLError, ConnectionError, TimeoutError):
        return False
