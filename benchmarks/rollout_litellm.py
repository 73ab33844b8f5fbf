"""UniRoute inside LiteLLM: the plug-in (``integrations/litellm_uniroute``) against LiteLLM's own ``simple-shuffle``.

Two LiteLLM proxies from the scratch venv (``benchmarks.litellm_peer``) serve the same model group, one deployment
per LLM on the replay endpoint: one routes it with ``simple-shuffle``, the other with the plug-in, which asks
UniRoute's ``POST /v1/route``. Measured (:func:`litellm_rollout`):

- the p50 the plug-in adds per request: the same requests one at a time, alternating between the two proxies;
- agreement: each of :data:`SAMPLE` (1,000) distinct prompts sent through the plug-in's proxy and asked of ``/v1/route``
  directly: the deployment LiteLLM called for it (its ``x-litellm-model-id`` header) must be that of ``/v1/route``'s
  ``chosen_llm`` for 100% of them (the floor), and the replay endpoint's request log must count exactly those
  LLMs (the upstream calls that really happened, per LLM).

:func:`litellm_section` is ``benchmarks.rollout``'s section (``SECTIONS["litellm"]``); run alone, it builds the same
scratch registry (``benchmarks.scratch_registry``) and replay endpoint first::

    python -m benchmarks.rollout_litellm [--sample 3000]    # --sample: prompts the router is fitted on
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import fcntl
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Final

import httpx
import numpy as np

from benchmarks.litellm_peer import MASTER_KEY, PROXY_ENV, ensure_litellm_venv, litellm_proxy, proxy_config
from benchmarks.mmlu_pro_data import DATA_HOME

#: Where LiteLLM's scratch venv lives (``benchmarks.litellm_peer``'s default).
LITELLM_ROOT: Final = DATA_HOME / "bench" / "litellm"
PLUGIN_DIR: Final = Path(__file__).resolve().parents[1] / "integrations" / "litellm_uniroute"
#: The model group both proxies serve (the name clients ask for).
GROUP: Final = "uniroute"
#: The proxy config's name of the plug-in's instance (``litellm_uniroute/proxy.py``).
PLUGIN_CALLBACK: Final = "litellm_uniroute.proxy.handler"


def ensure_uniroute_plugin(venv_dir: Path) -> None:
    """Install this checkout's plug-in into LiteLLM's scratch venv (editable, ``--no-deps``) unless it is there.

    Only ``venv_dir`` is touched (never the project's venv); pip builds it with setuptools from the package index.
    """
    python = Path(venv_dir) / "bin" / "python"
    probe = "import importlib.util as u; s = u.find_spec('litellm_uniroute'); print(s.origin if s else '')"
    with open(Path(venv_dir) / ".uniroute-plugin.lock", "w") as lock:  # test files on other workers install too
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
        if found and Path(found).resolve().is_relative_to(PLUGIN_DIR.resolve()):
            return
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-input", "--no-deps", "-e", str(PLUGIN_DIR)]
        subprocess.run(pip, check=True, env={**PROXY_ENV, "PATH": "/usr/bin:/bin"})


def routed_config(
    models: Mapping[str, str],
    *,
    plugin: bool = True,
    retries: int = 2,
    model_info: Mapping[str, Mapping] | None = None,
) -> dict:
    """LiteLLM's ``config.yaml``: one deployment per ``llm -> OpenAI base URL`` in the model group :data:`GROUP`.

    ``plugin``: route with the UniRoute plug-in (a callback; configured by ``UNIROUTE_*`` variables), else
    LiteLLM's ``simple-shuffle`` alone. ``model_info``: per LLM, the deployment's ``model_info`` (e.g.
    ``{"uniroute_llm": ...}`` when UniRoute names the LLM otherwise).
    """
    config = copy.deepcopy(proxy_config(models, retries))
    for deployment in config["model_list"]:
        llm = deployment["model_name"]
        deployment["model_name"] = GROUP
        deployment["model_info"] = {"id": f"deployment-{llm}", **(model_info or {}).get(llm, {})}
    if plugin:
        config["litellm_settings"]["callbacks"] = [PLUGIN_CALLBACK]
    return config


def plugin_env(route_base_url: str, key: str | None, **extra: str) -> dict[str, str]:
    """The proxy's ``UNIROUTE_*`` variables for the plug-in: the gateway, its client key, the routed group."""
    env = {"UNIROUTE_BASE_URL": route_base_url, "UNIROUTE_MODEL_GROUPS": GROUP, **extra}
    return env | ({"UNIROUTE_API_KEY": key} if key else {})


def litellm_rollout(
    route_base_url: str,
    key: str | None,
    replay_url: str,
    llms: Sequence[str],
    bodies: Sequence[dict],
    root: Path,
    *,
    latency_requests: int = 200,
    concurrency: int = 8,
    litellm_root: Path = LITELLM_ROOT,
) -> dict:
    """LiteLLM with the plug-in vs LiteLLM's ``simple-shuffle`` on the same deployments (``llms`` on the replay
    endpoint at ``replay_url``, ``.../v1``), routed by the UniRoute gateway at ``route_base_url`` (client ``key``).

    ``bodies``: chat requests with distinct prompts (the agreement sample; the first ``latency_requests`` also time
    the two proxies). The proxies' configs and logs go to ``root``; LiteLLM's venv is ``litellm_root/venv``.
    Returns p50s (ms, one request at a time, alternating), requests/s at ``concurrency``, and the agreement:
    ``agreement`` (share of the sample where LiteLLM called ``/v1/route``'s ``chosen_llm``), ``errors`` (requests
    that did not answer 200), ``log_agrees`` (the replay endpoint's per-LLM counts equal the choices), ``unrouted``
    (requests the plug-in left to LiteLLM's strategy, from the proxy's log).
    """
    venv = ensure_litellm_venv(litellm_root).parent.parent
    ensure_uniroute_plugin(venv)
    models = dict.fromkeys(llms, replay_url)
    with ExitStack() as stack:
        shuffle = stack.enter_context(
            litellm_proxy(models, venv, root / "litellm-shuffle.log", config=routed_config(models, plugin=False))
        )
        routed = stack.enter_context(
            litellm_proxy(
                models,
                venv,
                root / "litellm-uniroute.log",
                config=routed_config(models),
                env=plugin_env(route_base_url, key),
            )
        )
        result = asyncio.run(
            _compare(shuffle, routed, route_base_url, key, replay_url, bodies, latency_requests, concurrency)
        )
    # requests the plug-in left to LiteLLM's strategy (/v1/route failed or ranked no healthy deployment)
    result["unrouted"] = (root / "litellm-uniroute.log").read_text().count("UniRoute did not route")
    return result


async def _compare(
    shuffle: str,
    routed: str,
    route_base_url: str,
    key: str | None,
    replay_url: str,
    bodies: Sequence[dict],
    latency_requests: int,
    concurrency: int,
) -> dict:
    """The measurements of :func:`litellm_rollout` against the two running proxies."""
    proxy_headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:
        for url in (shuffle, routed):
            await _send(http, f"{url}/v1/chat/completions", proxy_headers, bodies[:16], 4)  # warm-up
        replay_root = replay_url.rstrip("/").removesuffix("/v1")
        route_url = f"{route_base_url.rstrip('/').removesuffix('/v1')}/v1/route"
        route_headers = {"Authorization": f"Bearer {key}"} if key else {}
        targets = {
            "shuffle": (f"{shuffle}/v1/chat/completions", proxy_headers),
            "uniroute": (f"{routed}/v1/chat/completions", proxy_headers),
            "route": (route_url, route_headers),  # the call the plug-in adds, alone
        }
        p50 = {name: [] for name in targets}
        for body in bodies[:latency_requests]:  # one at a time, alternating, so all see the machine alike
            for name, (url, headers) in targets.items():
                started = time.perf_counter()
                await _send(http, url, headers, [body], 1)
                p50[name].append((time.perf_counter() - started) * 1e3)
        rps, concurrent = {}, []
        for name, url in (("shuffle", shuffle), ("uniroute", routed)):
            started = time.perf_counter()
            concurrent = await _send(http, f"{url}/v1/chat/completions", proxy_headers, bodies, concurrency)
            rps[name] = len(bodies) / (time.perf_counter() - started)
        concurrent_routes = await _send(http, route_url, route_headers, bodies, concurrency)
        # the agreement sample: one request at a time, the replay log reset before it
        (await http.post(f"{replay_root}/_replay/reset")).raise_for_status()
        answers = await _send(http, f"{routed}/v1/chat/completions", proxy_headers, bodies, 1)
        log = (await http.get(f"{replay_root}/_replay/requests")).json()
        routes = await _send(http, route_url, route_headers, bodies, 1)
    summary = _summary(p50, rps, answers, routes, log)
    summary["agreement_concurrent"], summary["concurrency"] = _agreement(concurrent, concurrent_routes)[0], concurrency
    return summary


async def _send(
    http: httpx.AsyncClient, url: str, headers: dict, bodies: Sequence[dict], concurrency: int
) -> list[httpx.Response | None]:
    """POST each body, ``concurrency`` in flight; the responses in order (None where the connection failed)."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(body: dict) -> httpx.Response | None:
        async with semaphore:
            try:
                return await http.post(url, json=body, headers=headers)
            except httpx.HTTPError:
                return None

    return await asyncio.gather(*(one(body) for body in bodies))


def _summary(p50: dict, rps: dict, answers: list, routes: list, log: list[dict]) -> dict:
    """Latency, throughput and agreement figures of :func:`litellm_rollout`."""
    agreement, called, mismatches = _agreement(answers, routes)
    served = Counter()
    for row in log:
        if row["outcome"] == "ok":
            served[row["model"]] += row["count"]
    return {
        "shuffle_p50_ms": float(np.median(p50["shuffle"])),
        "uniroute_p50_ms": float(np.median(p50["uniroute"])),
        "added_p50_ms": float(np.median(p50["uniroute"]) - np.median(p50["shuffle"])),
        "route_p50_ms": float(np.median(p50["route"])),
        "shuffle_rps": rps["shuffle"],
        "uniroute_rps": rps["uniroute"],
        "sample": len(answers),
        "agreement": agreement,
        "mismatches": mismatches,
        "errors": sum(a is None or a.status_code != 200 for a in answers),
        "log_agrees": served == Counter(c for c in called if c is not None),
        "chosen_llms": len({c for c in called if c is not None}),
    }


def _agreement(answers: list, routes: list) -> tuple[float, list[str | None], list[dict]]:
    """The share of ``answers`` whose deployment's LLM is the ``chosen_llm`` of the /v1/route answer at the same
    index; the LLMs called; what each mismatch was (index, called, /v1/route's ranking with scores)."""
    called = [_deployment_llm(a) for a in answers]
    ranked = [r.json() if r is not None and r.status_code == 200 else {} for r in routes]
    mismatches = [
        {"index": i, "called": c, "ranked": [(row["llm"], row["score"]) for row in route.get("ranked", [])[:3]]}
        for i, (c, route) in enumerate(zip(called, ranked, strict=True))
        if c is None or c != route.get("chosen_llm")
    ]
    return 1 - len(mismatches) / len(answers), called, mismatches


def _deployment_llm(answer: httpx.Response | None) -> str | None:
    """The LLM whose deployment LiteLLM called (its ``x-litellm-model-id``, :func:`routed_config`'s ids)."""
    if answer is None or answer.status_code != 200:
        return None
    return answer.headers.get("x-litellm-model-id", "").removeprefix("deployment-") or None


def _sample_bodies(data_dir: Path, question_ids: Sequence[int], llms: Sequence[str], n: int) -> list[dict]:
    """``n`` routed chat requests for distinct MMLU-Pro questions of ``question_ids`` that every LLM answered (the
    agreement needs no unseen prompts: it compares two readings of one router)."""
    import polars as pl

    from profiling.rendering import render_mmlu_pro

    responses = pl.read_parquet(data_dir / "responses.parquet", columns=["model", "question_id", "response"])
    answered = (
        responses.filter(pl.col("model").is_in(list(llms)) & pl.col("response").is_not_null())
        .group_by("question_id")
        .agg(pl.col("model").n_unique().alias("n"))
        .filter(pl.col("n") == len(llms))
    )
    questions = pl.read_parquet(data_dir / "questions.parquet").filter(pl.col("question_id").is_in(list(question_ids)))
    rows = questions.join(answered, on="question_id").sort("question_id").to_dicts()
    texts = list(dict.fromkeys(render_mmlu_pro(r["question"], r["options"], r["category"]) for r in rows))[:n]
    if len(texts) < n:
        raise ValueError(f"--sample: {len(texts)} distinct prompts answered by every LLM, {n} needed; fit on more")
    return [{"model": "uniroute", "messages": [{"role": "user", "content": text}]} for text in texts]


#: (what, measured, required, met: None when only reported): benchmarks.rollout's Row
Row = tuple[str, str, str, bool | None]
SAMPLE: Final = 1000  # distinct prompts of the agreement check (the floor's sample)


def rows(result: dict) -> list[Row]:
    """:func:`litellm_rollout`'s result as rows of ``benchmarks.rollout``'s floor table."""
    met = result["agreement"] == 1.0 and result["errors"] == 0 and result["log_agrees"]
    return [
        (
            "LiteLLM: the plug-in's p50 added over simple-shuffle, one request at a time",
            f"{result['added_p50_ms']:.1f} ms ({result['uniroute_p50_ms']:.1f} vs {result['shuffle_p50_ms']:.1f} ms; "
            f"/v1/route alone {result['route_p50_ms']:.1f} ms)",
            "reported",
            None,
        ),
        (
            f"LiteLLM: requests/s at {result['concurrency']} in flight, plug-in / simple-shuffle",
            f"{result['uniroute_rps']:.1f} / {result['shuffle_rps']:.1f}",
            "",
            None,
        ),
        (
            f"LiteLLM: the plug-in's choice = /v1/route's, {result['sample']:,} distinct prompts one at a time",
            f"{result['agreement']:.1%} ({result['chosen_llms']} LLMs chosen, {result['errors']} errors, "
            f"{result['unrouted']} left to LiteLLM, replay log agrees: {result['log_agrees']}; "
            f"{result['agreement_concurrent']:.1%} at {result['concurrency']} in flight)",
            "100%",
            met,
        ),
    ]


def litellm_section(bench) -> list[Row]:
    """``benchmarks.rollout``'s section (``bench``: its ``Bench``): a gateway on the bench's registry, the two
    proxies on the replay endpoint's unseen LLMs, :data:`SAMPLE` distinct prompts; ``result.json`` (with every
    mismatch) under ``<scratch root>/litellm``."""
    from benchmarks.gateway import KEY

    scratch = bench.scratch
    llms = scratch.unseen["model"].to_list()
    bodies = _sample_bodies(scratch.data_dir, scratch.data.prompts["prompt_id"].to_list(), llms, SAMPLE)
    root = scratch.root / "litellm"
    root.mkdir(parents=True, exist_ok=True)
    with bench.gateway("gateway-litellm") as (chat_url, _):
        route_base = chat_url.removesuffix("/v1/chat/completions")
        result = litellm_rollout(route_base, KEY, bench.base_url, llms, bodies, root)
    (root / "result.json").write_text(json.dumps(result, indent=1))
    return rows(result)


def main(argv: list[str] | None = None) -> int:
    """This section alone: the scratch registry and replay endpoint ``benchmarks.rollout`` uses, then
    :func:`litellm_section`; exit 1 when the agreement floor is missed."""
    from benchmarks.gateway import replay_process
    from benchmarks.machine import machine_description
    from benchmarks.rollout import Bench
    from benchmarks.scratch_registry import add_scratch_arguments, scratch_registry
    from pipelines.demo import write_catalog

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scratch_arguments(parser)
    args = parser.parse_args(argv)
    try:
        scratch = scratch_registry(args, "rollout_litellm")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"machine: {machine_description()}; load average {os.getloadavg()[0]:.1f}\n", flush=True)
    with replay_process(scratch.root, scratch.data_dir, "replay") as base_url:
        catalog = scratch.root / "llms.yaml"
        write_catalog(catalog, scratch.unseen, base_url)
        found = litellm_section(Bench(args, scratch, catalog, base_url, challenger=""))
    print("| floor | measured | required | met |\n|---|---|---|---|")
    for what, measured, floor, met in found:
        print(f"| {what} | {measured} | {floor or '-'} | {'-' if met is None else 'yes' if met else 'NO'} |")
    return 1 if any(met is False for *_, met in found) else 0


if __name__ == "__main__":
    sys.exit(main())
