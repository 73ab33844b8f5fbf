"""Rolling out a new router under load (issue 27's floors), loopback only, one run.

The benchmark's router is registered as ``bench@champion`` in a scratch registry (:mod:`benchmarks.scratch_registry`)
and a second one (K-means with fewer clusters, the same LLMs and embedder) as ``bench@challenger``; the replay
endpoint (its own process) answers for every LLM; each gateway is ``uniroute serve`` as deployed
(:func:`benchmarks.gateway.gateway_process`, driven by :func:`benchmarks.gateway.load`). Sections, in order
(:data:`SECTIONS`; ``--sections`` picks some):

1. ``shadow``: a gateway with the shadow on (the default) and one with ``--no-shadow``, both up at once, the same
   ``--requests`` routed requests at ``--concurrency`` in flight sent to each by turns (on first, then off first, for
   ``--rounds`` rounds, so that both see the machine alike): the median over rounds of the requests/s ratio (floor
   >= 0.95); the p50 added one request at a time, on and off by turns on the same prompt (floor <= 0.5 ms); the
   shadow's ranking timed in-process; and every routed request's decision carries the shadow's choice.
2. ``canary``: a gateway with ``--canary-fraction 0.1`` and ``--canary-requests`` requests, two per OpenAI ``user``
   (different prompts): the share served by the challenger (floor: within 10% +/- 1 point) and the users who met
   both versions (floor 0); the decision records' ``served_alias`` agree with the responses' version header.

3. ``litellm``: LiteLLM's proxy with the plug-in (``integrations/litellm_uniroute``) against its own
   ``simple-shuffle`` on the same deployments (:mod:`benchmarks.rollout_litellm`): the p50 added per request, and
   the plug-in's choice equal to ``/v1/route``'s on 100% of 1,000 prompts.
4. ``rollback``: ``uniroute serve --workers 2`` serving the champion; the challenger promoted (the workers follow),
   then ``uniroute rollback`` under load at ``--concurrency`` in flight (:mod:`benchmarks.rollout_rollback`): 0
   failed requests, every request sent after the reload interval + 1 s served by the previous version.

A section is a function of :class:`Bench` returning its :data:`Row` s.

    python -m benchmarks.rollout [--sections shadow,canary,litellm,rollback] [--requests 1000] [--rounds 5] [--strict]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.gateway import Load, gateway_process, load, replay_process
from benchmarks.machine import machine_description
from benchmarks.rollout_litellm import litellm_section
from benchmarks.rollout_rollback import rollback_section
from benchmarks.routing_overhead import fit_router, register
from benchmarks.scratch_registry import Scratch, add_scratch_arguments, scratch_registry
from pipelines.demo import write_catalog
from serving.decisions import read_decisions

#: (what, measured, required, met: None when it is only reported)
Row = tuple[str, str, str, bool | None]
CHALLENGER_CLUSTERS = 8  # the champion has 16: another router over the same LLMs and embedder


@dataclass
class Bench:
    """What every section shares: the scratch registry (champion and challenger), the replay endpoint's catalog
    and the options."""

    args: argparse.Namespace
    scratch: Scratch
    catalog: Path
    base_url: str  # the replay endpoint's .../v1
    challenger: str  # its version

    def bodies(self, n: int, **fields) -> list[dict]:
        """``n`` routed chat bodies over the test prompts, in turn."""
        texts = self.scratch.texts
        return [
            {"model": "uniroute", "messages": [{"role": "user", "content": texts[i % len(texts)]}], **fields}
            for i in range(n)
        ]

    def gateway(self, name: str, *args: str):
        """``uniroute serve`` on the bench's registry and catalog (:func:`benchmarks.gateway.gateway_process`)."""
        return gateway_process(self.scratch.root, self.catalog, self.scratch.tracking, name, *args)


def _metric(chat_url: str, name: str) -> dict[tuple, float]:
    """``{sorted labels: value}`` of one metric's samples, scraped from the gateway of ``chat_url``."""
    from urllib.request import urlopen

    with urlopen(chat_url.replace("/v1/chat/completions", "/metrics"), timeout=10) as response:
        text = response.read().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def shadow_section(bench: Bench) -> list[Row]:
    """Shadow on vs off, interleaved: the median requests/s ratio at ``--concurrency`` in flight and the p50 added
    one request at a time (at 32 in flight a request's latency is mostly its wait, 32 / requests/s, so the p50
    added there is the throughput gap again); what the shadow's ranking costs in-process; its choice logged."""
    args = bench.args
    bodies = bench.bodies(args.requests)
    runs: dict[str, list[Load]] = {"on": [], "off": []}
    added: list[float] = []  # ms, one request at a time: on minus off, the same prompt, by turns
    with bench.gateway("gateway-shadow") as (on, _), bench.gateway("gateway-no-shadow", "--no-shadow") as (off, _):
        urls = {"on": on, "off": off}
        for url in urls.values():
            load(url, bodies[:64], args.concurrency)  # warm-up
        for r in range(args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for name in order:
                runs[name].append(load(urls[name], bodies, args.concurrency))
            for body in bodies[: args.single]:
                one = {name: load(urls[name], [body], 1).latencies[0] for name in order}
                added.append((one["on"] - one["off"]) * 1e3)
            on_rps, off_rps = runs["on"][-1].rps(), runs["off"][-1].rps()
            print(f"shadow round {r + 1}: on {on_rps:.1f} req/s, off {off_rps:.1f} req/s", flush=True)
        shadowed = sum(v for labels, v in _metric(on, "uniroute_shadow_total").items() if labels[0][1] != "failed")
    ratio = statistics.median(a.rps() / b.rps() for a, b in zip(runs["on"], runs["off"], strict=True))
    p50_added = statistics.median(added)
    errors = sum(run.errors for group in runs.values() for run in group)
    records = read_decisions(bench.scratch.root / "gateway-shadow" / "decisions")  # written at its SIGTERM
    logged = records.filter(records["shadow_version"] == bench.challenger).height
    routed = 64 + (args.requests + args.single) * args.rounds
    return [
        (
            f"shadow on / off requests/s at {args.concurrency} in flight (median of {args.rounds} rounds)",
            f"{ratio:.3f}",
            ">= 0.95",
            ratio >= 0.95,
        ),
        (
            f"shadow on: p50 added, one request at a time ({len(added)} pairs)",
            f"{p50_added:.2f} ms",
            "<= 0.5 ms",
            p50_added <= 0.5,
        ),
        ("shadow: its ranking in-process, per request (p50)", f"{shadow_rank_ms(bench):.3f} ms", "", None),
        ("shadow: failed requests (on and off)", str(errors), "0", errors == 0),
        (
            "shadow: routed requests whose decision holds the challenger's choice (metric: shadow rankings)",
            f"{logged} of {routed} ({shadowed:.0f})",
            "all",
            logged == routed,
        ),
    ]


def shadow_rank_ms(bench: Bench, n: int = 300) -> float:
    """Milliseconds (p50) of the challenger's ranking of one prompt already embedded: what the shadow adds to a
    routed request's path, without the noise of HTTP and a shared machine."""
    import mlflow

    from serving import registry

    registry.configure(bench.scratch.tracking)
    challenger = mlflow.pyfunc.load_model(f"models:/bench/{bench.challenger}").unwrap_python_model()
    texts = bench.scratch.texts[:n]
    vectors = bench.scratch.embedder.embed(texts)
    params = {"candidates": challenger.router.llms_}
    times = []
    for text, vector in zip(texts, vectors, strict=True):
        started = time.perf_counter()
        challenger.rank(text, vector, params)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def canary_section(bench: Bench) -> list[Row]:
    """``--canary-requests`` requests, two per user, at a canary of ``--canary-fraction``: the share the challenger
    served; users who met both versions; the decision log agreeing with the headers."""
    args = bench.args
    users = args.canary_requests // 2
    bodies = [{**body, "user": f"user-{i % users}"} for i, body in enumerate(bench.bodies(args.canary_requests))]
    with bench.gateway("gateway-canary", "--canary-fraction", str(args.canary_fraction)) as (url, _):
        warm_up = load(url, bench.bodies(64), args.concurrency)  # no user: the prompt decides; not in the share
        run = load(url, bodies, args.concurrency)
    met: dict[str, set[str]] = defaultdict(set)
    for body, version in zip(bodies, run.versions, strict=True):
        met[body["user"]].add(version)
    both = sum(len(versions) > 1 for versions in met.values())
    share = sum(v == bench.challenger for v in run.versions) / len(bodies)
    records = read_decisions(bench.scratch.root / "gateway-canary" / "decisions")
    logged = records.filter(records["served_alias"] == "challenger", records["router_version"] == bench.challenger)
    answered = sum(v == bench.challenger for v in warm_up.versions + run.versions)
    near = abs(share - args.canary_fraction) <= 0.01
    return [
        (
            f"canary at {args.canary_fraction:.0%}: share served by the challenger over {len(bodies)} requests",
            f"{share:.2%}",
            f"{args.canary_fraction:.0%} +/- 1 point",
            near,
        ),
        (f"canary: users ({users}, two requests each) who met both versions", str(both), "0", both == 0),
        ("canary: failed requests", str(run.errors), "0", run.errors == 0),
        (
            "canary: decisions served by the challenger / responses naming its version",
            f"{logged.height} / {answered}",
            "equal",
            logged.height == answered,
        ),
    ]


#: The sections in the order they run, each a function of Bench returning its rows; rollback last (it moves aliases).
SECTIONS: dict[str, Callable[[Bench], list[Row]]] = {
    "shadow": shadow_section,
    "canary": canary_section,
    "litellm": litellm_section,
    "rollback": rollback_section,
}


def register_challenger(scratch: Scratch) -> str:
    """Another router over the same LLMs and embedder registered as ``bench@challenger``; returns its version."""
    from serving import registry

    router = fit_router(scratch.data, scratch.split, n_clusters=CHALLENGER_CLUSTERS)
    uri = register(scratch.data, scratch.split, scratch.root, scratch.embedder, router, "challenger-router")
    version = uri.rsplit("/", 1)[1]
    assert registry.promote("bench", version, better=False) == registry.CHALLENGER
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scratch_arguments(parser)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    parser.add_argument("--requests", type=int, default=1000, help="routed requests per shadow round and gateway")
    parser.add_argument("--rounds", type=int, default=5, help="shadow on/off rounds, interleaved")
    parser.add_argument("--rollback-workers", type=int, default=2, help="gateway processes in the rollback section")
    parser.add_argument("--rollback-reload-interval", type=float, default=1.0, help="their reload interval, s")
    parser.add_argument("--single", type=int, default=100, help="one-at-a-time on/off pairs per shadow round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--canary-requests", type=int, default=10_000)
    parser.add_argument("--canary-fraction", type=float, default=0.1)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a floor is missed")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        print(f"error: --sections {unknown[0]!r}: expected some of {list(SECTIONS)}", file=sys.stderr)
        return 2
    try:
        scratch = scratch_registry(args, "rollout")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    challenger = register_challenger(scratch)
    load_average = os.getloadavg()[0]  # timings on a shared machine are preliminary: say how shared
    print(f"machine: {machine_description()}; load average {load_average:.1f}\n", flush=True)
    rows: list[Row] = []
    with replay_process(scratch.root, scratch.data_dir, "replay") as base_url:
        catalog = scratch.root / "llms.yaml"
        write_catalog(catalog, scratch.unseen, base_url)
        bench = Bench(args, scratch, catalog, base_url, challenger)
        for name in chosen:
            rows += SECTIONS[name](bench)
    print("\n| floor | measured | required | met |\n|---|---|---|---|")
    for what, result, floor, met in rows:
        print(f"| {what} | {result} | {floor or '-'} | {'-' if met is None else 'yes' if met else 'NO'} |")
    missed = [what for what, *_, met in rows if met is False]
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
