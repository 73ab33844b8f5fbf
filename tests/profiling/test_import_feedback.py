"""`uniroute import-feedback` as a user types it: ratings from CSV, Parquet or JSONL into ``traffic_feedback``;
a bad row is one line naming the row, column and value, exit code 2, nothing written; importing again stores
nothing new; ratings of requests without a stored decision are stored and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import polars as pl
import pytest

import warehouse as wh
from pipelines.cli import main
from serving.processes import venv_env


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with wh.connect(path) as con:  # two routed requests the gateway logged: 007 and r2
        decisions = {"request_id": ["007", "r2"], "at": [datetime.now(UTC)] * 2, "status": [200, 200]}
        frame = pl.DataFrame(decisions, schema_overrides={"status": pl.Int32}).with_columns(budget_kind=pl.lit("none"))
        wh.insert_routing_decisions(con, frame)
    return path


def _stored(path) -> pl.DataFrame:
    with wh.connect(path) as con:
        return wh.read_traffic_feedback(con)


def _out(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.strip()


def test_a_csv_is_stored_once_and_unknown_ids_are_counted(warehouse, tmp_path, capsys):
    csv = tmp_path / "ratings.csv"
    csv.write_text("request_id,score,rated_at\n007, 0.25,2026-12-01T10:00:00+01:00\nr2,1,\nghost,0,2026-12-01\n")
    assert main(["import-feedback", str(csv)]) == 0
    assert _out(capsys).startswith("feedback import:ratings.csv: 3 ratings stored, 0 already stored; 1 request ids")
    stored = _stored(warehouse).sort("request_id")
    assert stored["request_id"].to_list() == ["007", "ghost", "r2"]  # the CSV's ids stay text: leading zeros kept
    assert stored["score"].to_list() == [0.25, 0.0, 1.0]
    assert stored["rated_at"][0] == datetime(2026, 12, 1, 9, 0)  # +01:00 stored as UTC
    assert set(stored["source"]) == {"import:ratings.csv"} and stored["key_id"].is_null().all()
    assert stored["feedback_id"].str.starts_with("import-").all()

    assert main(["import-feedback", str(csv)]) == 0  # again: nothing new, even the row without a time
    assert "0 ratings stored, 3 already stored" in _out(capsys)
    assert _stored(warehouse).height == 3


def test_thumbs_from_jsonl_and_parquet_and_the_latest_rating_stands(warehouse, tmp_path, capsys):
    jsonl = tmp_path / "thumbs.jsonl"
    rows = [
        {"request_id": "r2", "thumbs": "up", "rated_at": "2026-12-01T10:00:00Z"},
        {"request_id": "r2", "thumbs": "Down ", "rated_at": "2026-12-02T10:00:00Z"},
        {"request_id": "r2", "thumbs": "Down ", "rated_at": "2026-12-02T10:00:00Z"},  # repeated in the file
    ]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["import-feedback", str(jsonl)]) == 0
    assert "2 ratings stored, 0 already stored, 1 repeated rows of the file stored once; 0 request" in _out(capsys)
    parquet = tmp_path / "later.parquet"
    later = {"request_id": ["r2"], "score": [0.75], "rated_at": [datetime(2026, 12, 3, tzinfo=UTC)]}
    pl.DataFrame(later).write_parquet(parquet)
    assert main(["import-feedback", str(parquet)]) == 0
    assert _stored(warehouse)["score"].to_list() == [1.0, 0.0, 0.75]  # the history, oldest first
    with wh.connect(warehouse) as con:
        assert wh.read_latest_feedback(con).select("request_id", "score", "source").rows() == [
            ("r2", 0.75, "import:later.parquet")
        ]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("request_id,score\n007,0.5\nr2,1.5\n", "row 2, column score: '1.5' is not a finite number in [0, 1]"),
        ("request_id,score\n007,0.5\nr2,nan\n", "row 2, column score: 'nan' is not a finite number in [0, 1]"),
        ("request_id,score\n007,0.5\nr2,inf\n", "row 2, column score: 'inf' is not a finite number in [0, 1]"),
        ("request_id,score\n007,0.5\nr2,good\n", "row 2, column score: 'good' is not a number"),
        ("request_id,score\n007,0.5\n,1\n", "row 2, column request_id: None is empty"),
        ("request_id,thumbs\n007,up\nr2,sideways\n", "row 2, column thumbs: 'sideways' is not one of ['up', 'down']"),
        ("request_id,score,thumbs\n007,0.5,\nr2,1,up\n", "row 2, column thumbs: 'up' beside a score"),
        ("request_id,score,thumbs\n007,0.5,\nr2,,\n", "row 2, column score: None (no score or thumbs)"),
        ("request_id,score,rated_at\n007,0.5,\nr2,1,yesterday\n", "row 2, column rated_at: 'yesterday' is not an ISO"),
        ("id,score\n007,0.5\n", "missing column 'request_id'"),
        ("request_id,rating\n007,0.5\n", "needs a 'score' or a 'thumbs' column"),
    ],
)
def test_a_bad_row_is_one_line_exit_2_and_nothing_is_written(warehouse, tmp_path, capsys, text, named):
    good = tmp_path / "good.csv"
    good.write_text("request_id,score\nr2,1\n")
    assert main(["import-feedback", str(good)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    assert main(["import-feedback", str(bad)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err
    assert err.startswith(f"uniroute import-feedback: {bad}: ") and named in err, err
    assert _stored(warehouse)["source"].to_list() == ["import:good.csv"]  # the good rows of bad.csv: not stored


def test_files_that_cannot_be_read_are_named(warehouse, tmp_path, capsys, monkeypatch):
    import profiling.feedback_import

    monkeypatch.setattr(profiling.feedback_import, "MAX_FEEDBACK_FILE_BYTES", 64)
    big = tmp_path / "big.csv"
    big.write_text("request_id,score\n" + "r2,1\n" * 20)
    assert main(["import-feedback", str(big)]) == 2
    assert "big.csv: file of 117 bytes is above the limit of 64 bytes" in capsys.readouterr().err
    assert main(["import-feedback", str(tmp_path / "ratings.xlsx")]) == 2
    assert "ratings.xlsx" in capsys.readouterr().err
    assert _stored(warehouse).height == 0


def test_exit_code_2_in_a_real_process(warehouse, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": "r2", "score": 2}\n')
    command = [sys.executable, "-m", "pipelines.cli", "import-feedback", str(bad), "--warehouse", str(warehouse)]
    done = subprocess.run(command, capture_output=True, text=True, env=venv_env(), timeout=300)
    expected = f"uniroute import-feedback: {bad}: row 1, column score: 2 is not a finite number in [0, 1]"
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [expected], done.stderr
    assert _stored(warehouse).height == 0
