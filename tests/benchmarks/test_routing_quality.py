"""The benchmark end to end on the fixture dataset, with the real embedder."""

from __future__ import annotations

import polars as pl

from benchmarks import routing_quality


def test_benchmark_runs_the_protocol_and_writes_results(mmlu_like_dir, tmp_path, capsys):
    argv = [
        "--data",
        str(mmlu_like_dir),
        "--full",
        "--seeds",
        "0",
        "1",
        "--training-llms",
        "3",
        "--k-grid",
        "2",
        "3",
        "--knn-grid",
        "3",
        "5",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
    ]
    routing_quality.main(argv)
    printed = capsys.readouterr().out
    assert "cost = flat" in printed and "cost = tokens" in printed and "floors" in printed
    results = pl.read_csv(tmp_path / "out" / "per_seed.csv")
    n_methods = len(routing_quality.MAIN_METHODS) + len(routing_quality.ABLATIONS)
    assert results.height == n_methods * 2 * 2  # x seeds x cost modes
    ablations = results.filter(pl.col("base").is_not_null())
    assert ablations["delta_base"].is_not_null().all()
    for (seed, mode), group in results.group_by("seed", "cost_mode"):
        oracle = group.filter(pl.col("method") == "Oracle")["audc"].item()
        assert (group["audc"] <= oracle + 1e-12).all(), (seed, mode)
    assert (tmp_path / "out" / "deferral_curves_flat.png").stat().st_size > 10_000
