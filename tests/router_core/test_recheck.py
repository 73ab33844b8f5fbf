"""The drift confirmation: suspicion, which prompts to ask again, and the paired sign test."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from router_core import RouterInputError, paired_change, recheck_plan, suspect_cells


def answers(llm: str, scores: list[float], cluster: int = 0, splits: list[str] | None = None) -> pl.DataFrame:
    n = len(scores)
    return pl.DataFrame(
        {
            "llm": [llm] * n,
            "prompt_id": [f"p{i}" for i in range(n)],
            "cluster": [cluster] * n,
            "score": scores,
            "split": splits or ["validation"] * n,
        }
    )


def test_an_unchanged_deterministic_endpoint_never_alarms():
    stored = answers("a", [1.0, 0.0] * 40)
    row = paired_change(stored, stored).row(0, named=True)
    assert (row["worse"], row["better"], row["p_value"], row["changed"]) == (0, 0, 1.0, False)


def test_a_drop_on_the_same_prompts_is_named_with_its_counts():
    rng = np.random.default_rng(0)
    before = (rng.random(60) < 0.6).astype(float)
    after = np.where(rng.random(60) < 0.7, 0.0, before)  # 70% of the answers now wrong
    table = paired_change(answers("a", before.tolist(), 3), answers("a", after.tolist(), 3))
    row = table.row(0, named=True)
    assert row["changed"] and row["better"] == 0 and row["worse"] > 15
    assert row["new_error"] > row["stored_error"]
    assert "a cluster 3" in row["message"] and f"{row['worse']} worse" in row["message"]


def test_symmetric_noise_is_no_change():
    """A non-deterministic endpoint: as many prompts moved up as down is no evidence of getting worse."""
    before = [1.0] * 20 + [0.0] * 20
    after = [0.0] * 8 + [1.0] * 12 + [1.0] * 8 + [0.0] * 12
    row = paired_change(answers("a", before), answers("a", after)).row(0, named=True)
    assert (row["worse"], row["better"]) == (8, 8)
    assert not row["changed"] and row["p_value"] > 0.5


def test_only_prompts_asked_again_count_and_cells_are_kept_apart():
    stored = pl.concat([answers("a", [1.0] * 12, 0), answers("b", [1.0] * 12, 0)])
    rechecked = answers("a", [0.0] * 12, 0).head(11)
    table = paired_change(stored, rechecked)
    assert table["llm"].to_list() == ["a"] and table["asked"].to_list() == [11]


def test_bad_scores_and_duplicates_are_named():
    stored = answers("a", [1.0, 0.0])
    with pytest.raises(RouterInputError, match=r"rechecked\.score.*1\.5.*p1"):
        paired_change(stored, answers("a", [1.0, 1.5]))
    with pytest.raises(RouterInputError, match=r"stored\.prompt_id.*p0"):
        paired_change(pl.concat([stored, stored]), stored)


def test_suspects_are_worst_first_and_need_enough_ratings():
    table = pl.DataFrame(
        {"llm": ["a", "b", "c", "d"], "cluster": [0, 1, 2, 3], "count": [6, 30, 4, 9], "z": [1.4, 2.5, 9.0, 0.5]}
    )
    assert suspect_cells(table)["llm"].to_list() == ["b", "a"]
    assert suspect_cells(table, z=2.0)["llm"].to_list() == ["b"]
    with pytest.raises(RouterInputError, match="min_count"):
        suspect_cells(table, min_count=0)


def test_plan_asks_validation_first_up_to_the_cap_and_is_stable():
    splits = ["test"] * 30 + ["validation"] * 10
    stored = pl.concat([answers("a", [1.0] * 40, 0, splits), answers("a", [1.0] * 40, 1, splits)])
    stored = stored.with_columns(prompt_id=pl.col("prompt_id") + "-" + pl.col("cluster").cast(pl.String))
    plan = recheck_plan(stored, pl.DataFrame({"llm": ["a"], "cluster": [1]}), per_cell=15)
    assert plan.height == 15 and set(plan["cluster"]) == {1}
    assert plan["split"].to_list() == ["validation"] * 10 + ["test"] * 5
    again = recheck_plan(stored.reverse(), pl.DataFrame({"llm": ["a"], "cluster": [1]}), per_cell=15)
    assert again["prompt_id"].to_list() == plan["prompt_id"].to_list()
    other = recheck_plan(stored, pl.DataFrame({"llm": ["a"], "cluster": [1]}), per_cell=15, salt="another")
    assert set(other["prompt_id"][10:]) != set(plan["prompt_id"][10:])
