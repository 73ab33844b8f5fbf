"""Re-checks in a real DuckDB file: answers asked again replace the stored ones, which move to the archive with their
grades; a re-check sees each such answer with its earlier grade; re-checked cells are recorded and the latest
stands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

import warehouse as wh
from tests.warehouse.test_store import _grades, _llm, _prompts, _responses

IDS = ["ds/0", "ds/1", "ds/2"]
URL = "http://127.0.0.1:9/v1"


@pytest.fixture
def con(tmp_path):
    con = wh.connect(tmp_path / "w.duckdb")
    wh.upsert_prompts(con, _prompts())
    wh.upsert_llms(con, _llm("m1", "v1"))
    wh.insert_responses(con, _responses("m1", IDS).with_columns(base_url=pl.lit(URL), model_id=pl.lit("v1")))
    wh.upsert_grades(con, _grades("m1", IDS, 1.0))
    yield con
    con.close()


def _asked_again(ids: list[str]) -> pl.DataFrame:
    answers = _responses("m1", ids, "the answer is (B)").with_columns(cost_usd=pl.lit(2e-6))
    return answers.with_columns(base_url=pl.lit(URL), model_id=pl.lit("v1"), run_id=pl.lit("run-2"))


def test_answers_asked_again_replace_the_stored_ones_which_keep_their_grades_in_the_archive(con):
    at = datetime.now(UTC).replace(tzinfo=None)
    assert wh.replace_answers(con, _asked_again(IDS[:2]), wh.RECHECK_REASON, at) == 2
    current = wh.read_responses(con, ["m1"]).sort("prompt_id")
    assert current["response"].to_list() == ["the answer is (B)"] * 2 + ["the answer is (A)"]
    archived = con.sql("SELECT prompt_id, response, reason, archived_at FROM responses_archive ORDER BY 1").fetchall()
    assert archived == [(i, "the answer is (A)", "drift re-check", at) for i in IDS[:2]]
    assert con.sql("SELECT count(*) FROM grades_archive WHERE score = 1.0").fetchall() == [(2,)]

    seen = wh.read_recheck_answers(con, "m1", ["validation"])
    assert seen["rechecked"].to_list() == [True, True, False]
    assert seen["score"].to_list() == [1.0, 1.0, 1.0]  # the earlier grade of those asked again
    assert seen["new_score"].to_list() == [None, None, None]  # not graded yet
    wh.upsert_grades(con, _grades("m1", IDS[:2], 0.0))
    seen = wh.read_recheck_answers(con, "m1", ["validation"])
    assert seen["new_score"].to_list() == [0.0, 0.0, None] and seen["new_cost_usd"].to_list() == [2e-6, 2e-6, None]
    # once the re-check is recorded, a later one starts from the current answers
    later = wh.read_recheck_answers(con, "m1", ["validation"], since=at)
    assert later["rechecked"].to_list() == [False] * 3 and later["score"].to_list() == [0.0, 0.0, 1.0]
    requests = wh.read_pair_requests(con, "m1", IDS[:1])
    assert requests.select("model", "prompt_id", "prompt").rows() == [("m1", "ds/0", "Q: question 0")]


def test_a_failed_replacement_changes_nothing(con):
    bad = _asked_again(IDS[:1]).with_columns(prompt_tokens=pl.lit(-1))
    with pytest.raises(wh.WarehouseInputError, match="prompt_tokens=-1"):
        wh.replace_answers(con, bad, wh.RECHECK_REASON, datetime.now(UTC))
    assert con.sql("SELECT count(*) FROM responses_archive").fetchall() == [(0,)]
    assert wh.read_responses(con, ["m1"])["response"].to_list() == ["the answer is (A)"] * 3


def _cell(cluster: int, at: datetime, changed: bool, rated: int = 10) -> dict:
    return {
        "llm": "m1",
        "cluster": cluster,
        "router_version": "1",
        "checked_at": at,
        "rated": rated,
        "asked": 12,
        "worse": 12 if changed else 0,
        "better": 0,
        "p_value": 0.0002 if changed else 1.0,
        "z": 3.5 if changed else -8.0,
        "changed": changed,
        "message": f"m1 cluster {cluster}",
    }


def test_rechecked_cells_are_recorded_and_the_latest_of_each_stands(con):
    first = datetime(2026, 1, 1, 12)
    later = first + timedelta(days=1)
    cells = pl.DataFrame([_cell(0, first, True), _cell(1, first, False), _cell(0, later, False, rated=20)])
    assert wh.record_rechecks(con, cells) == 3
    assert wh.record_rechecks(con, cells) == 0  # a re-run records nothing twice
    latest = wh.latest_rechecks(con, "1", ["m1"])
    assert latest.select("cluster", "changed", "rated").rows() == [(0, False, 20), (1, False, 10)]
    assert wh.last_recheck_at(con, "m1") == later and wh.last_recheck_at(con, "m2") is None
    assert wh.latest_rechecks(con, "2").height == 0
    with pytest.raises(wh.WarehouseInputError, match=r"drift_rechecks\.p_value=1\.5"):
        wh.record_rechecks(con, pl.DataFrame([_cell(2, first, True) | {"p_value": 1.5}]))
