"""Merging staged answers (a real DuckDB file): one transaction per file, recognised when merged again, and pending
pairs that take unmerged staged answers into account, stale ones excepted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

import warehouse as wh


@pytest.fixture
def con(tmp_path):
    con = _warehouse(tmp_path / "w.duckdb")
    yield con
    con.close()


def _warehouse(path):
    """A warehouse with three validation prompts and the LLM m1."""
    con = wh.connect(path)
    wh.upsert_prompts(
        con,
        pl.DataFrame(
            {
                "prompt_id": [f"ds/{i}" for i in range(3)],
                "dataset": "ds",
                "split": "validation",
                "text": [f"question {i}" for i in range(3)],
                "prompt": [f"Q: question {i}" for i in range(3)],
                "grader": "mmlu_pro_letter",
                "content_hash": [f"h{i}" for i in range(3)],
                "request_hash": "req-1",
            }
        ),
    )
    wh.upsert_llms(
        con,
        pl.DataFrame(
            {
                "name": ["m1"],
                "base_url": "http://127.0.0.1:1/v1",
                "model_id": "m1-id",
                "usd_per_mtok_in": 1.0,
                "usd_per_mtok_out": 2.0,
                "max_concurrency": 4,
                "active": True,
            }
        ),
    )
    return con


def _answers(ids: list[str], collected_at: datetime | None = None, request_hash: str = "req-1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": "m1",
            "prompt_id": ids,
            "response": "the answer is (A)",
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "latency_ms": 12.5,
            "cost_usd": 1e-6,
            "prompt_hash": "x",
            "run_id": "run-1",
            "base_url": "http://127.0.0.1:1/v1",
            "model_id": "m1-id",
            "request_hash": request_hash,
            "collected_at": collected_at,
        },
        schema_overrides={"collected_at": pl.Datetime("us")},
    )


def _failures(ids: list[str], attempts: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        {"model": "m1", "prompt_id": ids, "attempts": attempts, "last_error_class": "HTTP 503", "run_id": "run-1"}
    )


NO_ANSWERS = _answers([])
NO_FAILURES = _failures([])


def test_a_file_merged_again_adds_nothing_and_its_failures_count_once(con):
    first = wh.merge_staged(con, "model=m1/a.parquet", _answers(["ds/0"]), _failures(["ds/1"]))
    assert first == {"answers": 1, "answers_stored": 1, "failures": 1, "failures_recorded": 1}
    assert wh.merge_staged(con, "model=m1/a.parquet", _answers(["ds/0"]), _failures(["ds/1"])) is None
    assert wh.read_responses(con).height == 1
    assert wh.read_failures(con)["attempts"].to_list() == [3]  # not 6: the second merge wrote nothing
    merges = wh.read_staging_merges(con)
    assert merges.select("file", "answers", "answers_stored", "failures").rows() == [("model=m1/a.parquet", 1, 1, 1)]

    # another file's failure of the same pair adds its attempts; an answer clears the pair's failures
    wh.merge_staged(con, "model=m1/b.parquet", NO_ANSWERS, _failures(["ds/1"], attempts=2))
    assert wh.read_failures(con)["attempts"].to_list() == [5]
    wh.merge_staged(con, "model=m1/c.parquet", _answers(["ds/1"]), NO_FAILURES)
    assert wh.read_failures(con).height == 0


def test_a_failure_of_an_answered_pair_is_dropped_and_a_stored_answer_kept(con):
    wh.merge_staged(con, "model=m1/new.parquet", _answers(["ds/0"]).with_columns(run_id=pl.lit("new")), NO_FAILURES)
    counts = wh.merge_staged(
        con, "model=m1/old.parquet", _answers(["ds/0"]).with_columns(run_id=pl.lit("old")), _failures(["ds/0"])
    )
    assert counts == {"answers": 1, "answers_stored": 0, "failures": 1, "failures_recorded": 0}
    assert wh.read_responses(con)["run_id"].to_list() == ["new"] and wh.read_failures(con).height == 0


def test_a_bad_file_changes_nothing_and_is_not_recorded(con):
    bad = _answers(["ds/0", "ds/1"]).with_columns(prompt_tokens=pl.Series([1, -1]))
    with pytest.raises(wh.WarehouseInputError, match="prompt_tokens"):
        wh.merge_staged(con, "model=m1/bad.parquet", bad, _failures(["ds/2"]))
    assert wh.read_responses(con).height == 0 and wh.read_failures(con).height == 0
    assert wh.read_staging_merges(con).height == 0


def test_staged_answers_keep_the_time_they_came(con):
    came = datetime(2026, 1, 2, 3, 4, 5)
    wh.merge_staged(con, "model=m1/a.parquet", _answers(["ds/0"], collected_at=came), NO_FAILURES)
    assert wh.read_responses(con)["collected_at"].to_list() == [came]
    # so re-profiling what came before a cutoff still finds it
    assert wh.archive_responses(con, ["m1"], datetime(2026, 1, 3)) == 1


def _staged(ids: list[str], **columns: object) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": "m1",
            "prompt_id": ids,
            "request_hash": "req-1",
            "base_url": "http://127.0.0.1:1/v1",
            "model_id": "m1-id",
            "collected_at": datetime.now(UTC).replace(tzinfo=None),
            **columns,
        }
    )


def test_pending_pairs_leave_out_current_staged_answers_only(con):
    def pending(staged: pl.DataFrame, since: datetime | None = None) -> list[str]:
        return wh.pending_pairs(con, ["m1"], staged=staged, staged_since=since)["prompt_id"].to_list()

    assert pending(None) == ["ds/0", "ds/1", "ds/2"]
    assert pending(_staged(["ds/0", "ds/1"])) == ["ds/2"]
    assert pending(_staged(["ds/0"], request_hash=None)) == ["ds/1", "ds/2"]  # unknown request: taken as current
    assert pending(_staged(["ds/0", "ds/1"], request_hash="req-0")) == ["ds/0", "ds/1", "ds/2"]  # an older request
    assert pending(_staged(["ds/0"], model_id="m1-old")) == ["ds/0", "ds/1", "ds/2"]  # another model id
    assert pending(_staged(["ds/0"], base_url="http://old/v1")) == ["ds/0", "ds/1", "ds/2"]  # another endpoint
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert pending(_staged(["ds/0"]), since=hour_ago) == ["ds/1", "ds/2"]
    assert pending(_staged(["ds/0"], collected_at=hour_ago.replace(tzinfo=None)), since=datetime.now(UTC)) == [
        "ds/0",
        "ds/1",
        "ds/2",
    ]
    with pytest.raises(wh.WarehouseInputError, match=r"staged\.request_hash"):
        wh.pending_pairs(con, ["m1"], staged=_staged(["ds/0"]).drop("request_hash"))


def test_a_batch_of_files_merges_as_one_at_a_time_newest_first_would(con, tmp_path):
    newest, older, oldest = "model=m1/3.parquet", "model=m1/2.parquet", "model=m1/1.parquet"
    files = [
        (newest, _answers(["ds/0"]).with_columns(run_id=pl.lit("new")), _failures(["ds/1"], attempts=2)),
        (
            older,
            _answers(["ds/0", "ds/2"]).with_columns(run_id=pl.lit("old")),
            _failures(["ds/1"], attempts=3).with_columns(last_error_class=pl.lit("HTTP 429")),
        ),
        (oldest, NO_ANSWERS, _failures(["ds/2"], attempts=1)),
        (older, NO_ANSWERS, NO_FAILURES),  # named twice: merged once
    ]
    counts = wh.merge_staged_files(con, files)
    assert counts == [
        {"answers": 1, "answers_stored": 1, "failures": 1, "failures_recorded": 1},
        {"answers": 2, "answers_stored": 1, "failures": 1, "failures_recorded": 1},
        {"answers": 0, "answers_stored": 0, "failures": 1, "failures_recorded": 0},
        None,
    ]
    stored = wh.read_responses(con).sort("prompt_id")
    assert stored.select("prompt_id", "run_id").rows() == [("ds/0", "new"), ("ds/2", "old")]
    failures = wh.read_failures(con)
    assert failures.select("prompt_id", "attempts", "last_error_class").rows() == [("ds/1", 5, "HTTP 503")]

    # the same files one at a time leave the same answers and attempts
    one_by_one = _warehouse(tmp_path / "one.duckdb")
    for file, answers, failures_ in files[:3]:
        wh.merge_staged(one_by_one, file, answers, failures_)
    assert (
        wh.read_responses(one_by_one)
        .sort("prompt_id")
        .select("prompt_id", "run_id")
        .equals(stored.select("prompt_id", "run_id"))
    )
    assert wh.read_failures(one_by_one).select("prompt_id", "attempts").equals(failures.select("prompt_id", "attempts"))

    # merged again: nothing added, no attempt counted twice
    assert wh.merge_staged_files(con, files) == [None] * 4
    assert wh.read_responses(con).height == 2 and wh.read_failures(con)["attempts"].to_list() == [5]
    assert wh.read_staging_merges(con).height == 3
