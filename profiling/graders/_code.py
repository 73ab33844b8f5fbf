"""The code grader: run the answer's code against the prompt's tests in a limited subprocess (MBPP, HumanEval).

This is NOT a security sandbox. The limits (wall time, CPU time, address space, output, file size), the
empty environment, the temporary working directory and the patched ``socket``/``subprocess``/``os`` functions
stop accidents: an infinite loop, a memory bomb, a flood of output, an innocent network call. Code written to
escape them (``ctypes``, ``_socket``, ``/proc``) can. Run untrusted answers in a container or a VM.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import re
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from profiling.graders._base import (
    GradeContext,
    GradeItem,
    Grader,
    GradeResult,
    Option,
    int_between,
    optional_str,
    positive_float,
)

__all__ = ["CodeGrader", "extract_code"]

_FENCED = re.compile(r"```[ \t]*(?P<lang>[A-Za-z0-9_+-]*)[^\n]*\n(?P<code>.*?)```", re.DOTALL)
_PYTHON_LANGS = {"python", "py", "python3"}


def extract_code(response: str) -> str:
    """The last fenced ```python block of ``response``, else its last bare ``` block, else the whole text.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code("x = 1")
    'x = 1'
    """
    blocks = [(m["lang"].lower(), m["code"]) for m in _FENCED.finditer(response)]
    python = [code for lang, code in blocks if lang in _PYTHON_LANGS]
    if python:
        return python[-1]
    bare = [code for lang, code in blocks if not lang]
    return bare[-1] if bare else response


# Runs first in the child. The limits are set here rather than in a ``preexec_fn``: the grader forks from a
# thread pool, and CPython documents ``preexec_fn`` as unsafe with threads (the child may deadlock before exec).
# Soft = hard, so the answer's code cannot raise them back.
_PRELUDE = """\
import resource as _resource
for _limit, _value in ((_resource.RLIMIT_AS, {memory_bytes}), (_resource.RLIMIT_CPU, {cpu_s}),
                       (_resource.RLIMIT_FSIZE, {file_bytes}), (_resource.RLIMIT_CORE, 0)):
    _resource.setrlimit(_limit, (_value, _value))
del _limit, _value


def _uniroute_refused(*args, **kwargs):
    raise OSError("network and process creation are disabled by the code grader")


import socket as _socket
import _socket as _c_socket

class _UnirouteSocket(_c_socket.socket):
    pass


for _name in ("connect", "connect_ex", "bind", "listen", "sendto", "sendmsg"):
    setattr(_socket.socket, _name, _uniroute_refused)
    setattr(_UnirouteSocket, _name, _uniroute_refused)
_c_socket.socket = _c_socket.SocketType = _UnirouteSocket
_socket.create_connection = _socket.getaddrinfo = _socket.socketpair = _uniroute_refused
import os as _os
import subprocess as _subprocess
for _name in ("system", "fork", "forkpty", "kill", "killpg", "setsid", "posix_spawn", "posix_spawnp",
              "execv", "execve", "execl", "execle", "execlp", "execvp", "execvpe", "spawnv", "spawnve", "popen"):
    if hasattr(_os, _name):
        setattr(_os, _name, _uniroute_refused)
_subprocess.Popen = _uniroute_refused
del _name, _socket, _c_socket, _os, _subprocess, _resource
"""


def _identifier(value: Any, field: str) -> str | None:
    if optional_str(value, field) is not None and not value.isidentifier():
        raise ValueError(f"{field}: expected a Python identifier, got {value!r}")
    return value


def _optional_positive(value: Any, field: str) -> float | None:
    return None if value is None else positive_float(value, field)


class CodeGrader(Grader):
    """1.0 when the answer's code passes every test of the prompt (the program exits 0), else 0.0.

    The program is the answer's code (see ``extract_code``) followed by the prompt's ``tests`` (Python
    ``assert``\\ s, or with option ``entry_point`` HumanEval's ``def check(candidate)``, then
    ``check(<entry_point>)``). It runs as ``sys.executable -I`` in a fresh temporary directory that is removed
    afterwards, with only ``PATH`` in its environment, in its own session (the whole process group is killed at
    the end), under a wall-time limit, a CPU-time limit, an address-space limit and an output limit.
    A program that ends before its tests ran (``sys.exit(0)`` in the answer) fails.
    This is NOT a security sandbox: see the module's docstring.

    >>> grader = CodeGrader(timeout_s=5)
    >>> [r.score for r in grader.grade_items([GradeItem("def inc(x):\\n    return x + 1", tests="assert inc(1) == 2")])]
    [1.0]
    """

    name = "code"
    base_version = "1"
    description = "run the answer's Python code against the prompt's tests in a limited subprocess (not a sandbox)"
    needs_reference = False
    needs_tests = True
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("timeout_s", 10.0, "wall-time limit per answer, seconds", positive_float),
        Option("cpu_s", None, "CPU-time limit per answer, seconds (default: timeout_s)", _optional_positive),
        Option("memory_mb", 512, "address-space limit per answer, MiB", int_between(32, 1 << 20)),
        Option("output_bytes", 1 << 20, "stdout + stderr kept; the program is killed beyond", int_between(1, 1 << 30)),
        Option("entry_point", None, "HumanEval: the function passed to the tests' check(candidate)", _identifier),
        Option("workers", 2, "answers run in parallel (does not change scores)", int_between(1, 16), versioned=False),
        Option("tmp_dir", None, "where the temporary directories go (default: the system's)", optional_str, False),
    )

    def check_tests(self, tests: object, field: str) -> None:
        super().check_tests(tests, field)
        if self.entry_point is None and re.search(r"^def check\(", tests, re.MULTILINE):  # type: ignore[arg-type]
            raise ValueError(
                f"{field}: the tests define check(candidate) but option entry_point is not set, got {tests!r:.80}"
            )

    def program(self, response: str, tests: str, sentinel: str) -> str:
        """The source the child runs: prelude, answer code, tests, then ``sentinel`` printed last."""
        cpu_s = self.cpu_s if self.cpu_s is not None else self.timeout_s
        prelude = _PRELUDE.format(
            memory_bytes=self.memory_mb << 20, cpu_s=math.ceil(cpu_s), file_bytes=max(self.output_bytes, 1 << 24)
        )
        check = f"\n\ncheck({self.entry_point})\n" if self.entry_point else "\n"
        return f"{prelude}\n{extract_code(response)}\n\n{tests}{check}\nprint({sentinel!r}, flush=True)\n"

    def grade_items(self, items: Sequence[GradeItem], context: GradeContext | None = None) -> list[GradeResult]:
        """Runs the items ``workers`` at a time; an item without tests gets ``score=None`` and the reason."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self._grade_one, items))

    def _grade_one(self, item: GradeItem) -> GradeResult:
        error = self.item_error(item)
        if error:
            return GradeResult(None, error=error)
        sentinel = f"uniroute-tests-passed-{secrets.token_hex(8)}"
        with tempfile.TemporaryDirectory(prefix="uniroute-code-", dir=self.tmp_dir) as workdir:
            Path(workdir, "main.py").write_text(self.program(item.response, item.tests, sentinel), encoding="utf-8")  # type: ignore[arg-type]
            try:
                returncode, output, problem = self._run(workdir)
            except OSError as exc:  # could not start the interpreter: not the answer's fault
                return GradeResult(None, error=f"code: could not run {sys.executable}: {exc}")
        text = output.decode("utf-8", errors="replace")
        if problem:
            return GradeResult(0.0, detail=problem)
        if returncode == 0 and sentinel in text:
            return GradeResult(1.0, detail="passed")
        last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        if returncode == 0:
            return GradeResult(0.0, detail=f"exited before its tests ran: {last_line:.200}")
        return GradeResult(0.0, detail=f"exit code {returncode}: {last_line:.200}")

    def _run(self, workdir: str) -> tuple[int | None, bytes, str | None]:
        """(exit code, output, what cut it short or None); the process group is always killed."""
        start = time.monotonic()
        deadline = start + self.timeout_s
        process = subprocess.Popen(
            [sys.executable, "-I", "main.py"],
            cwd=workdir,
            env={"PATH": os.environ.get("PATH", os.defpath)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output, problem = bytearray(), None
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
                while problem is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        problem = f"timed out after {self.timeout_s:g} s"
                    elif selector.select(remaining):
                        chunk = os.read(process.stdout.fileno(), 1 << 16)  # type: ignore[union-attr]
                        if not chunk:
                            break
                        output += chunk[: self.output_bytes - len(output) + 1]
                        if len(output) > self.output_bytes:
                            del output[self.output_bytes :]
                            problem = f"output over {self.output_bytes} bytes"
            if problem is None and not _exited(process, deadline):  # closed its output but kept running
                problem = f"timed out after {self.timeout_s:g} s"
        finally:
            _kill_group(process)
            process.stdout.close()  # type: ignore[union-attr]
            process.wait()
        return process.returncode, bytes(output), problem


def _exited(process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait until the child exits or ``deadline``, without reaping it: its pid, the group's id, stays reserved
    until ``_kill_group`` has run."""
    while True:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group's id is the child's pid
