"""The onboarding-cost benchmark end to end on the fixture dataset, with the real embedder."""

from __future__ import annotations

import polars as pl

from benchmarks import onboarding_cost


def test_benchmark_runs_every_method_at_every_fraction_and_checks_the_floors(mmlu_like_dir, tmp_path, capsys):
    argv = ["--data", str(mmlu_like_dir), "--full", "--seeds", "0", "1", "--training-llms", "3", "--k-grid", "3"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert onboarding_cost.main(argv) == 0  # without --strict a failed floor is printed, not an exit code
    printed = capsys.readouterr().out
    assert printed.count("[PASS]") + printed.count("[FAIL]") == 4
    assert "the pool without it" in printed and onboarding_cost.CHOSEN in printed
    results = pl.read_csv(tmp_path / "out" / "per_seed.csv")
    fractions = len(onboarding_cost.FRACTIONS)
    assert results.height == 2 * fractions * len(onboarding_cost.METHODS)
    assert pl.read_csv(tmp_path / "out" / "provisional.csv").height == 2 * fractions
    # with every prompt asked, every order and estimator gives today's Psi: one AUDC per seed
    full = results.filter(pl.col("fraction") == 1.0)
    assert full.group_by("seed").agg(pl.col("audc").n_unique())["audc"].to_list() == [1, 1]
    # the number of prompts asked grows with the fraction, from one prompt to the whole validation set
    asked = results.filter(pl.col("method") == onboarding_cost.BASELINE, pl.col("seed") == 0).sort("fraction")
    assert asked["asked"].to_list()[0] >= 1 and asked["asked"].to_list()[-1] == asked["n_validation"][0]
    assert asked["asked"].is_sorted()
    assert (tmp_path / "out" / "audc_vs_fraction.png").stat().st_size > 10_000


def test_missing_dataset_exits_2_naming_the_path(tmp_path, capsys):
    assert onboarding_cost.main(["--data", str(tmp_path / "absent")]) == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err
