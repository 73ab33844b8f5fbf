from __future__ import annotations

import polars as pl
import pytest

from benchmarks.mmlu_pro_data import load_mmlu_pro
from profiling.importers import stratified_sample
from profiling.rendering import router_input


def test_keeps_only_prompts_every_llm_answered(mmlu_like_dir):
    ds = load_mmlu_pro(mmlu_like_dir)
    assert ds.prompts.height == 120 - 12  # "last" lacks every 10th question
    assert (ds.prompts["prompt_id"] % 10 != 0).all()
    assert ds.outcomes.group_by("model").len()["len"].to_list() == [ds.prompts.height] * 6
    assert ds.llms.filter(pl.col("model") == "generalist")["cost"].item() == 4.0


def test_token_cost_grows_with_the_response(mmlu_like_dir):
    outcomes = load_mmlu_pro(mmlu_like_dir).outcomes.filter(pl.col("model") == "cheap").sort("prompt_id")
    assert outcomes["cost_usd"].min() > 0
    assert (
        outcomes.filter(pl.col("prompt_id") == 2)["cost_usd"].item()
        > outcomes.filter(pl.col("prompt_id") == 1)["cost_usd"].item()
    )


def test_router_input_letters_the_options():
    assert router_input(" Q? ", ["x", "y"]) == "Q?\n(A) x\n(B) y"


def test_stratified_sample_keeps_category_shares(mmlu_like_dir):
    prompts = load_mmlu_pro(mmlu_like_dir).prompts
    sample = stratified_sample(prompts, 54, seed=1)
    assert sample.height == 54
    assert sample.group_by("category").len()["len"].to_list() == [18, 18, 18]


def test_missing_data_dir_names_the_path_and_the_variable(tmp_path):
    with pytest.raises(FileNotFoundError, match="UNIROUTE_MMLU_PRO_DIR"):
        load_mmlu_pro(tmp_path / "nowhere")
