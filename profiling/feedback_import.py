"""``uniroute import-feedback``: outcomes of routed requests kept elsewhere (a CSV, Parquet or JSONL file of
``request_id`` and ``score`` in [0, 1], or ``thumbs`` up/down, and optionally ``rated_at``) into the warehouse's
``traffic_feedback``, beside the ratings the gateway takes.

Every row is checked before anything is written: a bad one is named in one line (file, row, column, value) and
nothing is stored. A rating's id is a hash of what it says (request id, score, and ``rated_at`` when the file gives
one), so importing a file again, or a longer export of the same ratings, stores only ratings not stored before. A
row without ``rated_at`` counts as rated when first imported; give ``rated_at`` when a request's rating changes,
since a rating that returns to an earlier score without a time is the earlier rating. Ratings of request ids the
warehouse's ``routing_decisions`` does not hold are stored too (their decision file may load later) and counted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

import warehouse as wh
from profiling.results.reader import read_table
from warehouse.userfiles import UserFileError, check_size

__all__ = [
    "MAX_FEEDBACK_FILE_BYTES",
    "THUMBS",
    "FeedbackFileError",
    "FeedbackImport",
    "import_feedback",
    "read_feedback_file",
]

#: The largest feedback file read (about five million ratings of a CSV).
MAX_FEEDBACK_FILE_BYTES = 256 * 1024 * 1024
#: What ``thumbs`` may say, as scores.
THUMBS = {"up": 1.0, "down": 0.0}
_TEXT = ("request_id", "score", "thumbs", "rated_at")


class FeedbackFileError(ValueError):
    """A feedback file refused; the one-line message names the file and, for a bad row, the row (data rows counted
    from 1), the column and the value."""


@dataclass(frozen=True)
class FeedbackImport:
    """What an import did: ratings in the file, newly stored, stored before, repeated within the file (stored
    once), and request ids of the file that no stored decision has."""

    source: str
    rows: int
    stored: int
    already_stored: int
    repeated: int
    unknown_requests: int


def import_feedback(
    con: duckdb.DuckDBPyConnection, path: str | os.PathLike[str], now: datetime | None = None
) -> FeedbackImport:
    """Check every row of the feedback file at ``path``, then store its ratings (``source`` ``import:<file
    name>``; rows without ``rated_at`` rated at ``now``, default the current time) in one transaction."""
    path = Path(path)
    ratings = read_feedback_file(path, now)
    unique = ratings.unique(subset="feedback_id", keep="first", maintain_order=True)
    stored = wh.insert_traffic_feedback(con, unique)
    unknown = wh.unknown_request_ids(con, unique["request_id"])
    return FeedbackImport(
        source=unique["source"][0] if unique.height else f"import:{path.name}",
        rows=ratings.height,
        stored=stored,
        already_stored=unique.height - stored,
        repeated=ratings.height - unique.height,
        unknown_requests=len(unknown),
    )


def read_feedback_file(path: Path, now: datetime | None = None) -> pl.DataFrame:
    """The file's ratings as ``traffic_feedback`` rows (``feedback_id, request_id, key_id, score, rated_at,
    source``), one per row of the file; :class:`FeedbackFileError` on the first bad row."""
    try:
        check_size(path, MAX_FEEDBACK_FILE_BYTES)
    except UserFileError as exc:
        raise FeedbackFileError(str(exc)) from None
    table = read_table(path, text_columns=_TEXT).with_row_index("_row", offset=1)
    if "request_id" not in table.columns:
        raise FeedbackFileError(f"{path}: missing column 'request_id' (have {table.columns[1:]})")
    if "score" not in table.columns and "thumbs" not in table.columns:
        raise FeedbackFileError(f"{path}: needs a 'score' or a 'thumbs' column (have {table.columns[1:]})")
    request_ids = _request_ids(table, path)
    scores = _scores(table, path)
    given = _rated_at(table, path)
    default = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    return pl.DataFrame(
        {
            "feedback_id": [_rating_id(*rating) for rating in zip(request_ids, scores, given, strict=True)],
            "request_id": request_ids,
            "key_id": [None] * table.height,
            "score": scores,
            "rated_at": [default if at is None else at for at in given],
            "source": f"import:{path.name}",
        },
        schema={
            "feedback_id": pl.String,
            "request_id": pl.String,
            "key_id": pl.String,
            "score": pl.Float64,
            "rated_at": pl.Datetime("us"),
            "source": pl.String,
        },
    )


def _bad(path: Path, row: int, column: str, value: object, problem: str) -> FeedbackFileError:
    return FeedbackFileError(f"{path}: row {row}, column {column}: {value!r} {problem}")


def _first(table: pl.DataFrame, bad: pl.Expr, column: str) -> tuple[int, object] | None:
    """The first row where ``bad`` holds, and its ``column`` value, or None."""
    found = table.filter(bad.fill_null(False)).select("_row", column)
    return found.row(0) if found.height else None


def _request_ids(table: pl.DataFrame, path: Path) -> list[str]:
    if table.schema["request_id"] not in (pl.String, pl.Int64, pl.Int32, pl.UInt64, pl.UInt32):
        raise FeedbackFileError(f"{path}: column request_id: {table.schema['request_id']} values are not ids")
    ids = table["request_id"].cast(pl.String)
    if found := _first(table.with_columns(ids), ids.is_null() | (ids.str.strip_chars() == ""), "request_id"):
        raise _bad(path, found[0], "request_id", found[1], "is empty: every rating needs the request it rates")
    return ids.to_list()


def _scores(table: pl.DataFrame, path: Path) -> list[float]:
    """Each row's score: its ``score``, or its ``thumbs`` (up 1, down 0); exactly one of them per row."""
    score = pl.lit(None, pl.Float64)
    if "score" in table.columns:
        if table.schema["score"] == pl.Boolean:
            raise FeedbackFileError(f"{path}: column score: booleans are not scores (use thumbs: up/down)")
        given = pl.col("score").str.strip_chars() if table.schema["score"] == pl.String else pl.col("score")
        score = given.cast(pl.Float64, strict=False)
        if found := _first(table, pl.col("score").is_not_null() & score.is_null(), "score"):
            raise _bad(path, found[0], "score", found[1], "is not a number")
        out_of_range = ~(score.is_between(0, 1) & score.is_not_nan())
        if found := _first(table, pl.col("score").is_not_null() & out_of_range, "score"):
            raise _bad(path, found[0], "score", found[1], "is not a finite number in [0, 1]")
    thumbs = pl.lit(None, pl.Float64)
    if "thumbs" in table.columns:
        said = pl.col("thumbs").cast(pl.String).str.strip_chars().str.to_lowercase()
        thumbs = said.replace_strict(THUMBS, default=None, return_dtype=pl.Float64)
        if found := _first(table, pl.col("thumbs").is_not_null() & thumbs.is_null(), "thumbs"):
            raise _bad(path, found[0], "thumbs", found[1], f"is not one of {list(THUMBS)}")
    both = score.is_not_null() & thumbs.is_not_null()
    if "score" in table.columns and "thumbs" in table.columns and (found := _first(table, both, "thumbs")):
        raise _bad(path, found[0], "thumbs", found[1], "beside a score: give a score or thumbs, not both")
    result = table.select("_row", pl.coalesce(score, thumbs).alias("score"))
    if found := _first(result, pl.col("score").is_null(), "score"):
        raise _bad(path, found[0], "score", None, "(no score or thumbs): every row needs one")
    return result["score"].to_list()


def _rated_at(table: pl.DataFrame, path: Path) -> list[datetime | None]:
    """Each row's ``rated_at`` as naive UTC (an ISO 8601 time; one without an offset is UTC), None where not
    given."""
    if "rated_at" not in table.columns:
        return [None] * table.height
    column = table["rated_at"]
    if isinstance(column.dtype, pl.Datetime):
        if column.dtype.time_zone is not None:
            column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return column.to_list()
    out: list[datetime | None] = []
    for row, value in zip(table["_row"], column.to_list(), strict=True):
        try:
            at = None if value is None else datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise _bad(path, row, "rated_at", value, "is not an ISO 8601 time (e.g. 2026-12-07T08:30:00Z)") from None
        out.append(at if at is None or at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None))
    return out


def _rating_id(request_id: str, score: float, rated_at: datetime | None) -> str:
    """What a rating says, hashed: the same rating imported again gets the same id (never a gateway's uuid hex)."""
    said = f"{request_id}\x1f{score!r}\x1f{'' if rated_at is None else rated_at.isoformat()}"
    return "import-" + hashlib.sha256(said.encode()).hexdigest()[:32]
