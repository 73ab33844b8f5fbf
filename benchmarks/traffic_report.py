"""The traffic loop benchmark's floors and tables (:mod:`benchmarks.traffic_loop`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from benchmarks.machine import machine_description

if TYPE_CHECKING:
    from benchmarks.traffic_loop import Degradation, SeedResult

Floor = tuple[str, str, str, bool]


def _detections(values: list[int | None]) -> str:
    return ", ".join("missed" if d is None else str(d) for d in values)


def floors(results: list[SeedResult], args: argparse.Namespace) -> list[Floor]:
    """(floor, measured, required, met) over the seeds; the recovery floors are those of the ``args.blend`` variant
    (the other's figures are in :func:`print_tables`)."""
    n = len(results)
    false_alarms = sum(r.false_alarms_before > 0 for r in results)
    detected = [r.detected_after for r in results]
    selective = args.blend == "selective"
    recovered = [r.recovered_selective if selective else r.recovered for r in results]
    kept = [r.audc_selective_before if selective else r.audc_traffic_before for r in results]
    worse = [r.audc_champion_before - audc for r, audc in zip(results, kept, strict=True)]
    lost = [(r.decisions_expected - r.decisions_on_disk, r.feedback_posted - r.feedback_on_disk) for r in results]
    samples = [r.samples_expected - r.samples_on_disk for r in results]
    return [
        ("seeds with a confirmed false alarm before the change", f"{false_alarms} of {n}", "0", false_alarms == 0),
        (
            "requests after the change until a confirmed alarm names the LLM and an affected cluster",
            _detections(detected),
            "<= 2000 each",
            all(d is not None and d <= 2000 for d in detected),
        ),
        (
            f"share of lost AUDC recovered with traffic features ({args.blend} blend)",
            ", ".join(f"{x:.2f}" for x in recovered),
            ">= 0.80 each",
            all(x >= 0.8 for x in recovered),
        ),
        (
            f"champion - traffic router AUDC without the degradation ({args.blend} blend)",
            ", ".join(f"{w:+.4f}" for w in worse),
            "<= 0.001 each",
            all(w <= 0.001 for w in worse),
        ),
        (
            "decisions / feedback / samples lost after SIGTERM",
            ", ".join(f"{d}/{f}/{s}" for (d, f), s in zip(lost, samples, strict=True)),
            "0/0/0",
            all(d == f == s == 0 for (d, f), s in zip(lost, samples, strict=True)),
        ),
    ]


def print_tables(results: list[SeedResult], rows: list[Floor], change: Degradation, args) -> None:
    """The run's settings, per-seed tables, each seed's alarms and the floors, as Markdown."""
    print(f"\nmachine: {machine_description()}")
    print(
        f"traffic: {args.before} + {args.after} requests per seed, {args.concurrency} in flight; "
        f"{args.sample_rate:.0%} sampled and judged, feedback on {args.feedback_rate:.0%}; drift checked every "
        f"{args.check_every} requests on the last {args.window}: suspect z > {args.suspect_z} (>= "
        f"{args.suspect_min_count} rated), up to {args.recheck_prompts} stored prompts asked again per suspect cell "
        f"(again after {args.recheck_new} new rated; a confirmed LLM's other cells at once: {args.recheck_llm}), "
        f"confirmed by the sign test at z > {args.z}; traffic-only: "
        f"z > {args.z}, >= {args.min_count} rated"
    )
    print(
        f"degradation after request {args.before}: {change.llm} answers {change.category!r} with {change.served_by}'s\n"
    )
    print(
        "| seed | rated (feedback + judge) | rated in degraded cell | false alarms before: confirmed / traffic-only | "
        "detected after: confirmed / traffic-only | wrong confirmed after | prompts asked again before / after | "
        "affected clusters |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.seed} | {r.rated_feedback} + {r.rated_judge} | {r.rated_degraded_cell} | {r.false_alarms_before} / "
            f"{r.traffic_only_false_alarms_before} | {_detections([r.detected_after])} / "
            f"{_detections([r.traffic_only_detected_after])} | {r.wrong_alarms_after} | {r.asked_before} / "
            f"{r.asked_after} | {r.affected} |"
        )
    print(
        "\n| seed | AUDC before: champion / (a) all / (b) selective | after: champion / truth / (a) / (b) | "
        "recovered (a) / (b) |"
    )
    print("|---|---|---|---|")
    for r in results:
        print(
            f"| {r.seed} | {r.audc_champion_before:.4f} / {r.audc_traffic_before:.4f} / {r.audc_selective_before:.4f} "
            f"| {r.audc_champion_after:.4f} / {r.audc_truth_after:.4f} / {r.audc_traffic_after:.4f} / "
            f"{r.audc_selective_after:.4f} | {r.recovered:.2f} / {r.recovered_selective:.2f} |"
        )
    for r in results:
        print(f"seed {r.seed}: {r.alarm or 'no confirmed alarm'}; {r.first_false_alarm or 'no false alarm'}")
        print(f"  traffic-only: {r.traffic_only_alarm or 'no alarm'}; highest z before: {r.max_z_before:.1f}")
        print(f"  {len(r.rechecks)} cells asked again ({r.ungraded} answers ungraded); the last: {r.rechecks[-3:]}")
        print(
            f"  {change.llm} in the affected clusters at the end: {'; '.join(r.degraded_cells) or 'no rated traffic'}"
        )
        print(f"  gate on held-out traffic: {r.heldout_gate}")
    print("\n| floor | measured | required | met |\n|---|---|---|---|")
    for what, measured, required, met in rows:
        print(f"| {what} | {measured} | {required} | {'yes' if met else 'NO'} |")
