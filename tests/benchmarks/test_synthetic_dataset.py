"""The synthetic dataset: generated into a temporary directory and loaded as the routing benchmark loads it."""

from __future__ import annotations

import polars as pl
import pytest

from benchmarks import synthetic_dataset
from benchmarks.mmlu_pro_data import load_routing_data


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synthetic")
    synthetic_dataset.generate(out, seed=3, n_prompts=400)
    return out, load_routing_data(out)


def test_loads_in_the_generic_layout_with_every_family_and_llm(generated):
    _, ds = generated
    n_llms = sum(a.count for a in synthetic_dataset.ARCHETYPES)
    assert ds.prompts.height == 400 and ds.llms.height == n_llms
    assert ds.outcomes.height == 400 * n_llms
    assert set(ds.prompts["category"]) == {f.name for f in synthetic_dataset.FAMILIES}
    assert set(ds.outcomes["score"].unique()) == {0.0, 1.0}
    assert ds.outcomes["cost_usd"].min() > 0 and ds.outcomes["cost_usd"].n_unique() > 100  # costs vary per answer
    assert ds.prompts["text"].n_unique() == 400


def test_same_seed_same_files_other_seed_other_data(generated, tmp_path):
    out, ds = generated
    again = load_routing_data(synthetic_dataset.generate(tmp_path / "again", seed=3, n_prompts=400))
    assert again.prompts.equals(ds.prompts) and again.outcomes.equals(ds.outcomes) and again.llms.equals(ds.llms)
    assert (tmp_path / "again" / "prompts.jsonl").read_bytes() == (out / "prompts.jsonl").read_bytes()
    other = load_routing_data(synthetic_dataset.generate(tmp_path / "other", seed=4, n_prompts=400))
    assert not other.outcomes["score"].equals(ds.outcomes["score"])


def test_families_differ_in_which_llm_is_best(generated):
    _, ds = generated
    accuracy = (
        ds.outcomes.join(ds.prompts.select("prompt_id", "category"), on="prompt_id")
        .group_by("category", "model")
        .agg(pl.col("score").mean())
    )
    best = accuracy.sort("score", descending=True).group_by("category").agg(pl.col("model").first())
    archetypes = {m.rsplit("-", 1)[0] for m in best["model"]}
    assert len(archetypes) >= 3, best  # e.g. a coder on code, a math model on arithmetic, a frontier model elsewhere
    cheapest = ds.llms.sort("cost")["model"][0]
    assert cheapest.startswith("syn-small-")  # prices follow general ability


def test_cli_writes_the_files_and_refuses_too_few_prompts(tmp_path, capsys):
    assert synthetic_dataset.main([str(tmp_path / "cli"), "--prompts", "60", "--seed", "1"]) == 0
    names = {p.name for p in (tmp_path / "cli").iterdir()}
    assert names == {"prompts.jsonl", "results.parquet", "models.csv", "spec.yaml", "abilities.csv"}
    assert synthetic_dataset.main([str(tmp_path / "bad"), "--prompts", "5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --prompts 5: must be at least 50"
