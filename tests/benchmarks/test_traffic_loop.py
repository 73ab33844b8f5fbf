"""The traffic loop benchmark end to end on the fixture dataset: real replay endpoint and gateway, a short run."""

from __future__ import annotations

import json

from benchmarks import traffic_loop


def test_benchmark_degrades_an_llm_judges_rates_and_keeps_every_record(mmlu_like_dir, tmp_path, capsys):
    out = tmp_path / "figures.json"
    argv = ["--data", str(mmlu_like_dir), "--full", "--clusters", "3", "--seeds", "0", "--before", "300"]
    argv += ["--after", "300", "--check-every", "150", "--window", "300", "--sample-rate", "0.2"]
    argv += ["--feedback-rate", "0.2", "--concurrency", "8", "--cache-dir", str(tmp_path / "cache")]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert traffic_loop.main(argv) == 0
    printed = capsys.readouterr().out
    assert "machine:" in printed and "| floor | measured | required | met |" in printed
    figures = json.loads(out.read_text())
    seed = figures["seeds"][0]
    change = figures["degradation"]
    assert change["llm"] != change["served_by"]
    assert seed["errors"] == 0 and seed["requests"] == 600
    assert seed["rated_feedback"] > 0 and seed["rated_judge"] > 0  # both sources reach the outcomes
    assert seed["decisions_on_disk"] == seed["decisions_expected"] == 600
    assert seed["feedback_on_disk"] == seed["feedback_posted"] > 0
    assert seed["samples_on_disk"] == seed["samples_expected"] > 0
    # the change is real (the champion loses AUDC on the degraded answers), seen and learned from: on the fixture an
    # LLM that was always right turns always wrong, which the loop must notice and route around
    assert seed["audc_truth_after"] > seed["audc_champion_after"]
    assert seed["false_alarms_before"] == 0 and seed["detected_after"] is not None
    assert seed["alarm"].startswith(f"{change['llm']}, cluster ")
    assert seed["recovered"] >= 0.8 and seed["audc_traffic_before"] >= seed["audc_champion_before"] - 0.001
