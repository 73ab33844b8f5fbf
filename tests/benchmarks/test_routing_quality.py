"""The benchmark end to end on the fixture dataset, with the real embedder."""

from __future__ import annotations

import polars as pl
import pytest

from benchmarks import embedders, routing_quality


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


def test_splits_are_disjoint_stratified_and_keep_test_fixed_across_validation_shares(mmlu_like_dir):
    from benchmarks.mmlu_pro_data import load_mmlu_pro

    ds = load_mmlu_pro(mmlu_like_dir)
    data = routing_quality.Data(ds.prompts, ds.llms["model"].to_list(), None, None, None, None)
    split = routing_quality.split_prompts_and_llms(data, seed=3, n_training_llms=3)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert sum(map(len, parts)) == ds.prompts.height and len(set().union(*parts)) == ds.prompts.height
    assert not set(split.training_llms) & set(split.unseen_llms) and len(split.unseen_llms) == 3
    test_share = ds.prompts[split.test].group_by("category").len()["len"].to_list()
    assert max(test_share) - min(test_share) <= 1  # 36 per category, 30% each
    wider = routing_quality.split_prompts_and_llms(data, seed=3, n_training_llms=3, validation_share=0.2)
    assert (wider.test == split.test).all() and len(wider.validation) > len(split.validation)
    other_seed = routing_quality.split_prompts_and_llms(data, seed=4, n_training_llms=3)
    assert set(other_seed.test) != set(split.test)


def test_missing_dataset_exits_2_naming_the_path_and_the_variable(tmp_path, capsys):
    assert routing_quality.main(["--data", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "absent") in err and "UNIROUTE_MMLU_PRO_DIR" in err


def test_a_dataset_in_the_generic_layout_gets_the_same_table(mmlu_like_dir, tmp_path, capsys):
    """Results with per-query costs and a prompt file, as a user brings them: no MMLU-Pro code involved."""
    data = _generic_dataset(mmlu_like_dir, tmp_path / "mine")
    argv = ["--data", str(data), "--full", "--seeds", "0", "--training-llms", "3", "--k-grid", "2", "3"]
    argv += ["--knn-grid", "3", "--no-ablations", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o")]
    assert routing_quality.main(argv) == 0
    printed = capsys.readouterr().out
    assert "cost = flat" in printed and "UniRoute-KMeans" in printed
    results = pl.read_csv(tmp_path / "o" / "per_seed.csv")
    assert results.height == len(routing_quality.MAIN_METHODS) * 2
    # the fixture's "last" lacks every 10th question: those prompts are dropped, never scored as wrong
    assert "data: 108 prompts x 6 LLMs" in printed
    uniroute = results.filter(pl.col("method") == "UniRoute-KMeans", pl.col("cost_mode") == "tokens")["audc"].item()
    zero = results.filter(pl.col("method") == "ZeroRouter", pl.col("cost_mode") == "tokens")["audc"].item()
    assert uniroute > zero  # topic specialists: routing on the prompt's text wins


def _generic_dataset(mmlu_like_dir, folder, copies: int = 0):
    """The fixture's answers as a user's results table (generic layout) with a prompt file; ``copies`` more LLMs,
    each a renamed copy of one of the six, so the pool has 6 + ``copies``."""
    questions = pl.read_parquet(mmlu_like_dir / "questions.parquet")
    answers = pl.read_parquet(mmlu_like_dir / "responses.parquet")
    models = answers["model"].unique(maintain_order=True).to_list()
    extra = [
        answers.filter(pl.col("model") == models[i % 6]).with_columns(model=pl.lit(f"copy{i}")) for i in range(copies)
    ]
    answers = pl.concat([answers, *extra])
    folder.mkdir()
    questions.select(
        pl.format("q{}", "question_id").alias("prompt_id"), pl.col("question").alias("prompt"), "category"
    ).write_ndjson(folder / "prompts.jsonl")
    answers.select(
        "model",
        pl.format("q{}", "question_id").alias("prompt_id"),
        pl.col("correct").alias("score"),
        (pl.col("response").str.len_chars() * 1e-6 * (pl.col("model").rank("dense") + 1)).alias("cost_usd"),
    ).write_parquet(folder / "results.parquet")
    return folder


def test_the_default_number_of_training_llms_is_a_share_of_a_small_pool(mmlu_like_dir, tmp_path, capsys):
    """Eleven LLMs: the paper's 14 training LLMs would leave none to route among; the default is half the pool."""
    data = _generic_dataset(mmlu_like_dir, tmp_path / "eleven", copies=5)
    argv = ["--data", str(data), "--full", "--seeds", "0", "--k-grid", "2", "--knn-grid", "3", "--no-ablations"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o")]
    assert routing_quality.main(argv) == 0
    assert "x 11 LLMs" in capsys.readouterr().out
    assert routing_quality.training_llm_count(11) == 5 and routing_quality.training_llm_count(29) == 14
    # a count that leaves fewer than two LLMs to route among is one line, exit code 2
    assert routing_quality.main([*argv, "--training-llms", "10"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the embedder's loading bar
    assert last.startswith("error: --training-llms 10: the dataset has 11 LLMs; between 1 and 9 may train")


@pytest.mark.parametrize("module", [routing_quality, embedders])
def test_help_prints_every_option(module, capsys):
    """``--help`` of the benchmarks the docs print (a ``%`` in a help text once crashed argparse's formatting)."""
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "--training-llms" in capsys.readouterr().out
