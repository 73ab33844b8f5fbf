"""LiteLLM's proxy as a peer of the UniRoute gateway in benchmarks: the same requests, the same replay endpoint.

LiteLLM pins other versions of our dependencies, so it gets a scratch virtualenv of its own
(:func:`ensure_litellm_venv`: stdlib ``venv`` and pip, every package pinned in :data:`PINS`, no torch, rebuilt only
when the pins change). :func:`litellm_proxy` starts ``litellm --config ...`` (one uvicorn worker, loopback only) with
one ``openai/<name>`` deployment per model, everything that phones home or logs per request switched off by
environment and config, and stops its whole process group on exit.

Run as a script, it is a smoke comparison on the real data: the replay endpoint (zero latency) answers MMLU-Pro
prompts directly and through LiteLLM, plain and streamed, and a markdown table of p50/p99, requests/s and errors is
printed with the machine line::

    python -m benchmarks.litellm_peer [--requests 200] [--concurrency 32] [--root data/bench/litellm]

The first run builds the venv (~1 min, ~760 MB); LiteLLM then needs ~7-15 s to answer its first request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import venv as stdlib_venv
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import yaml

from serving.processes import free_port, server_process

#: The LiteLLM release benchmarked. Later ones do not install from this machine's index: 1.108.8+ pin
#: litellm-enterprise/litellm-proxy-extras post-releases that are not served, 1.110.x needs ``litellm-proxy``
#: (not served); 1.107.0 was the compromised (withdrawn) release.
LITELLM_VERSION: Final = "1.108.7"

#: ``pip freeze`` of ``litellm[proxy]==LITELLM_VERSION`` on Python 3.11 / Linux x86_64: installing the whole set
#: pinned needs no resolver backtracking and always gives the same proxy.
PINS: Final[tuple[str, ...]] = tuple(
    f"litellm[proxy]=={LITELLM_VERSION} litellm-enterprise==0.1.79.post1 litellm-proxy-extras==0.4.110 "
    """
    aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0
    APScheduler==3.11.3 attrs==26.1.0 azure-core==1.41.0 azure-identity==1.27.0 azure-storage-blob==12.31.1
    backoff==2.2.1 boto3==1.44.18 botocore==1.44.18 certifi==2026.10.19.post1 cffi==2.1.1 charset-normalizer==3.5.3
    click==8.5.1 croniter==7.0.0 cryptography==50.0.2 dnspython==2.9.2 email-validator==2.4.0 Expression==5.8.0
    fastapi==0.165.0 fastapi-sso==0.23.0 fastuuid==0.14.0 filelock==4.3.2 frozenlist==1.8.0 fsspec==2026.9.0
    granian==2.8.9 gunicorn==23.0.0 h11==0.16.0 h2==4.4.1 hf-xet==1.8.0 hiredis==3.5.0 hpack==4.2.0 httpcore==1.0.9
    httpcore2==2.17.0 httpx==0.29.0 httpx2==2.17.0 huggingface_hub==1.33.0 hyperframe==6.1.0 idna==3.21
    importlib_metadata==8.9.0 inquirerpy==0.3.4 isodate==0.7.2 Jinja2==3.1.6 jiter==0.19.0 jmespath==1.1.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 markdown-it-py==4.3.0 MarkupSafe==3.0.4 mcp==2.3.0
    mcp-types==2.3.0 mdurl==0.1.2 msal==1.39.0 msal-extensions==1.3.1 multidict==7.2.1 numpy==2.4.6 oauthlib==4.0.1
    openai==3.63.0 opentelemetry-api==1.45.3 orjson==3.13.0 packaging==26.4 pfzy==0.3.4 polars==1.44.2
    polars-runtime-32==1.44.2 prompt_toolkit==3.0.53 propcache==0.5.4 psycopg==3.3.9 psycopg-binary==3.3.9
    pycparser==3.12 pydantic==2.14.4 pydantic-settings==2.16.3 pydantic_core==2.50.5 Pygments==2.21.0 PyJWT==2.15.1
    PyNaCl==1.6.2 pyroscope-io==0.8.16 python-dateutil==2.9.0.post0 python-dotenv==1.2.4 python-multipart==0.0.34
    PyYAML==6.0.4 redis==8.2.0 referencing==0.37.0 regex==2026.12.2 requests==2.34.2 RestrictedPython==8.5
    rich==13.9.4 rpds-py==2026.9.1 rq==2.12.0 s3transfer==0.19.3 six==1.17.0 sniffio==1.3.1 soundfile==0.14.0
    sse-starlette==3.7.1 starlette==1.10.0 tiktoken==0.14.0 tokenizers==0.23.3 tomlkit==0.15.3 tqdm==4.70.1
    truststore==0.10.5 typing-inspection==0.4.5 typing_extensions==4.16.0 tzlocal==5.4.5 urllib3==2.8.0
    uvicorn==0.55.0 uvloop==0.23.0 wcwidth==0.9.4 websockets==15.0.1 yarl==1.25.1 zipp==4.1.2
    """.split()
)

#: The proxy's master key (LiteLLM refuses to start without one): send ``Authorization: Bearer <MASTER_KEY>``.
MASTER_KEY: Final = f"sk-bench-{secrets.token_hex(16)}"

#: Environment of the proxy: nothing fetched from the network (cost map, Anthropic beta headers, autorouter presets,
#: blog posts, policy templates: the bundled copies), telemetry vetoed, no ``.env`` read (``PRODUCTION``), errors
#: only (no access log line per request), no admin UI or docs, a short graceful shutdown.
PROXY_ENV: Final[Mapping[str, str]] = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_MODE": "PRODUCTION",
    "LITELLM_LOG": "ERROR",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "NO_REDOC": "True",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "5",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "NO_PROXY": "127.0.0.1,localhost",
    "PYTHONNOUSERSITE": "1",
}
#: Variables of ours that must not reach the proxy: a database or cache it would connect to, our venv's paths.
_DROPPED_ENV: Final = ("DATABASE_URL", "DIRECT_URL", "REDIS_URL", "REDIS_HOST", "PYTHONPATH", "VIRTUAL_ENV")

_STAMP: Final = "uniroute-pins.json"


def ensure_litellm_venv(root: Path) -> Path:
    """The ``litellm`` executable of a venv under ``root`` (``root/venv``) with :data:`PINS` installed.

    A venv whose stamp lists the same pins and Python is reused; otherwise it is built afresh (pip, ~1 min). Callers
    in other processes (test files on other workers) wait for one build and reuse it.
    """
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / ".venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_litellm_venv(Path(root) / "venv")


def _ensure_litellm_venv(venv_dir: Path) -> Path:
    executable = venv_dir / "bin" / "litellm"
    stamp = venv_dir / _STAMP
    wanted = json.dumps({"python": sys.version.split()[0], "pins": sorted(PINS)}, indent=1)
    if executable.exists() and stamp.exists() and stamp.read_text() == wanted:
        return executable
    print(f"litellm_peer: building {venv_dir} (litellm[proxy]=={LITELLM_VERSION}, {len(PINS)} pins)...", flush=True)
    started = time.perf_counter()
    shutil.rmtree(venv_dir, ignore_errors=True)
    stdlib_venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    requirements = venv_dir / "requirements.txt"
    requirements.write_text("\n".join(PINS) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    python = str(venv_dir / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--no-input", "--only-binary=:all:", "-r", str(requirements)]
    subprocess.run(pip, check=True, env=env)
    site_packages = next((venv_dir / "lib").glob("python3*/site-packages"))
    if (site_packages / "torch").exists():
        raise RuntimeError(f"{venv_dir}: torch was installed; LiteLLM's venv must not have it")
    if not executable.exists():
        raise RuntimeError(f"{venv_dir}: no {executable.name} executable after the install")
    stamp.write_text(wanted)
    print(f"litellm_peer: venv ready in {time.perf_counter() - started:.0f} s", flush=True)
    return executable


def proxy_config(models: Mapping[str, str], retries: int = 2) -> dict:
    """LiteLLM's ``config.yaml`` content: one ``openai/<name>`` deployment per ``name -> OpenAI base URL``.

    ``retries``: the router's retries (our gateway's default is 2); the OpenAI SDK's own retries are off so that
    a request is not retried at two levels. Costs are zero (the replay models are not in LiteLLM's cost map).
    """
    model_list = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": base_url,
                "api_key": "sk-dummy",
                "max_retries": 0,
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
            },
        }
        for name, base_url in models.items()
    ]
    return {
        "model_list": model_list,
        "litellm_settings": {
            "num_retries": retries,
            "request_timeout": 600,
            "set_verbose": False,
            "json_logs": False,
            "turn_off_message_logging": True,
            "cache": False,
        },
        "router_settings": {"num_retries": retries, "routing_strategy": "simple-shuffle"},
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            "disable_spend_logs": True,
            "store_model_in_db": False,
            "background_health_checks": False,
        },
    }


@contextmanager
def litellm_proxy(
    models: Mapping[str, str],
    venv: Path,
    log_path: Path,
    port: int | None = None,
    *,
    retries: int = 2,
    startup_timeout_s: float = 180.0,
    config: Mapping | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Serve ``models`` (name -> OpenAI base URL, e.g. ``http://127.0.0.1:8765/v1``) with LiteLLM's proxy.

    ``venv``: what :func:`ensure_litellm_venv` returned (or the venv directory). The config is written beside
    ``log_path`` (``<log stem>.config.yaml``): ``config`` when given (``models`` and ``retries`` then unused), else
    :func:`proxy_config`; ``env`` is added to the proxy's environment. The proxy's output goes to ``log_path``.
    Yields the base URL ``http://127.0.0.1:<port>`` once ``/health/liveliness`` answers (send ``Authorization:
    Bearer`` :data:`MASTER_KEY` to ``/v1/chat/completions``); on exit the whole process group is stopped
    (SIGTERM, then SIGKILL).
    """
    venv = Path(venv)
    executable = venv / "bin" / "litellm" if venv.is_dir() else venv.parent / "litellm"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config_path = log_path.with_name(f"{log_path.stem}.config.yaml")
    config_path.write_text(yaml.safe_dump(dict(config or proxy_config(models, retries)), sort_keys=False))
    port = port or free_port()
    extra_env = dict(env or {})
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env |= {**PROXY_ENV, "LITELLM_MASTER_KEY": MASTER_KEY, "PATH": f"{executable.parent}:{os.environ.get('PATH', '')}"}
    env |= extra_env
    command = [str(executable), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", "1"]
    base_url = f"http://127.0.0.1:{port}"
    process: subprocess.Popen | None = None
    try:
        with server_process(command, f"{base_url}/health/liveliness", log_path, env, startup_timeout_s) as process:
            yield base_url
    finally:
        if process is not None:
            _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL whatever is left of ``process``'s group (server_process sent SIGTERM and waited)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


# --- the smoke comparison -----------------------------------------------------------------------------------------


async def _run(url: str, bodies: list[dict], concurrency: int, headers: dict[str, str]) -> dict:
    """POST ``bodies`` with ``concurrency`` in flight; p50/p99 ms, requests/s, errors."""
    import aiohttp
    import numpy as np

    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []

    async def one(session: aiohttp.ClientSession, body: dict) -> None:
        async with semaphore:
            started = time.perf_counter()
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    raw = await response.read()
                    problem = _problem(response.status, raw, body.get("stream", False))
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            latencies.append(time.perf_counter() - started)
            if problem:
                errors.append(problem)

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(one(session, body) for body in bodies))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(bodies) / wall,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def _problem(status: int, raw: bytes, stream: bool) -> str:
    """Why an answer is not a good one ('' when it is): the status, no content, a stream without ``[DONE]``."""
    if status != 200:
        return f"HTTP {status}: {raw[:200]!r}"
    if stream:
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        if not events or events[-1].strip() != "[DONE]":
            return "stream without [DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    else:
        text = json.loads(raw)["choices"][0]["message"]["content"] or ""
    return "" if text else "empty content"


def _smoke_bodies(data_dir: Path, models: list[str], n: int) -> list[dict]:
    """``n`` chat requests for MMLU-Pro prompts that ``models`` answered, cycling over the models."""
    import polars as pl

    from profiling.rendering import render_mmlu_pro

    questions = pl.read_parquet(data_dir / "questions.parquet")
    responses = pl.read_parquet(data_dir / "responses.parquet", columns=["model", "question_id", "response"])
    answered = (
        responses.filter(pl.col("model").is_in(models) & pl.col("response").is_not_null())
        .group_by("question_id")
        .agg(pl.col("model").n_unique().alias("n"))
        .filter(pl.col("n") == len(models))
    )
    rows = questions.join(answered, on="question_id").sort("question_id").head(n).to_dicts()
    if len(rows) < n:
        raise ValueError(f"{data_dir}: only {len(rows)} questions answered by all of {models}")
    return [
        {
            "model": models[i % len(models)],
            "messages": [
                {"role": "user", "content": render_mmlu_pro(row["question"], row["options"], row["category"])}
            ],
        }
        for i, row in enumerate(rows)
    ]


def main(argv: list[str] | None = None) -> int:
    """The smoke comparison: replay endpoint directly vs through LiteLLM, plain and streamed."""
    from benchmarks.machine import machine_description
    from benchmarks.mmlu_pro_data import DATA_HOME
    from replay import ReplayConfig, ReplayServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/mmlu_pro"))
    parser.add_argument("--root", type=Path, default=DATA_HOME / "bench" / "litellm")
    parser.add_argument("--models", nargs="+", default=["gemini-1.5-flash-002", "Qwen1.5-7B-Chat", "Yi-34B"])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    executable = ensure_litellm_venv(args.root)
    venv_s = time.perf_counter() - started
    bodies = _smoke_bodies(args.data, args.models, args.requests)
    streamed = [{**body, "stream": True} for body in bodies]
    warmup = bodies[:16] + streamed[:16]
    rows = []
    with ReplayServer(args.data, ReplayConfig(latency_ms=0)) as replay:
        started = time.perf_counter()
        with litellm_proxy({m: replay.base_url for m in args.models}, executable, args.root / "proxy.log") as proxy:
            startup_s = time.perf_counter() - started
            targets = {
                "direct": (f"{replay.base_url}/chat/completions", {}),
                "LiteLLM": (f"{proxy}/v1/chat/completions", {"Authorization": f"Bearer {MASTER_KEY}"}),
            }
            for url, headers in targets.values():
                asyncio.run(_run(url, warmup, 8, headers))
            for mode, sent in (("plain", bodies), ("stream", streamed)):
                for name, (url, headers) in targets.items():
                    rows.append((name, mode, asyncio.run(_run(url, sent, args.concurrency, headers))))

    print(f"\nmachine: {machine_description()}")
    print(
        f"LiteLLM {LITELLM_VERSION} (1 uvicorn worker, master key, {len(args.models)} models): venv {venv_s:.0f} s, "
        f"proxy answered after {startup_s:.1f} s; replay endpoint at zero latency in this process; "
        f"{args.requests} requests per row, {args.concurrency} in flight\n"
    )
    print("| target | mode | p50 ms | p99 ms | requests/s | errors |")
    print("|---|---|---|---|---|---|")
    for name, mode, r in rows:
        print(f"| {name} | {mode} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.0f} | {r['errors']} |")
    failures = [(name, mode, r["first_error"]) for name, mode, r in rows if r["errors"]]
    for name, mode, error in failures:
        print(f"first error, {name} {mode}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
