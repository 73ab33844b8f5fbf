"""The checks and coercion every results format shares: the normalised schema, the one-line
:class:`ResultsError`, and turning each format's chunks of rows into one typed, range-checked frame."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "prompt_id": pl.String(),
    "score": pl.Float64(),
    "prompt": pl.String(),
    "response": pl.String(),
    "cost_usd": pl.Float64(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "category": pl.String(),
    "reference": pl.String(),
    "split": pl.String(),
}
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA)
#: The most tokens one answer may count (the warehouse stores them as 32-bit integers).
MAX_TOKENS = 2**31 - 1
_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt_id": ("prompt_id", "question_id", "sample_id", "id"),
    "score": ("score", "correct"),
    "cost_usd": ("cost_usd", "cost"),
    "input_tokens": ("input_tokens", "prompt_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens"),
}
_PER_PROMPT = ("prompt", "category", "reference", "split")
_SPLITS = {"train": "train", "test": "test", **dict.fromkeys(("validation", "val", "valid", "dev"), "validation")}


class ResultsError(ValueError):
    """A results file that cannot be read as evaluation results; the message is one line.

    Attributes ``path``, ``column``, ``row`` and ``value`` hold what the message names, ``None`` where it names
    none. ``row`` is ``"row N"`` (data rows counted from 1, the header not counted) or, in lm-eval samples,
    ``"line N"``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        column: str | None = None,
        row: str | None = None,
        value: Any = None,
    ) -> None:
        super().__init__(message)
        self.path, self.column, self.row, self.value = path, column, row, value


@dataclass(frozen=True)
class _Origin:
    """Where a chunk of rows came from: the file, what its rows are called, and its source column names."""

    file: str
    row_word: str = "row"
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, name: str) -> str:
        return self.columns.get(name, name)


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype == pl.Boolean


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row_error(origin: _Origin, row: dict[str, Any], name: str, problem: str, value: Any) -> ResultsError:
    column = origin.column(name)
    where = f"{origin.row_word} {row['_row']}"
    return ResultsError(
        f"{origin.file}: column {column!r}, {where} (model={row.get('model')!r}, prompt_id={row.get('prompt_id')!r}): "
        f"{problem}: {_show(value)}",
        path=origin.file,
        column=column,
        row=where,
        value=value,
    )


def _fail_first(frame: pl.DataFrame, bad: pl.Series, origin: _Origin, name: str, problem: str, raw: pl.Series) -> None:
    """Raise for the first row where ``bad`` holds, showing its ``raw`` value."""
    bad = bad.fill_null(False)
    if bad.any():
        index = int(bad.arg_true()[0])
        raise _row_error(origin, frame.row(index, named=True), name, problem, raw[index])


def _coerce(frame: pl.DataFrame, origin: _Origin) -> pl.DataFrame:
    """The chunk with every result column present, typed and range-checked."""
    for name in RESULT_COLUMNS:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=RESULT_SCHEMA[name]).alias(name))
    for name in ("model", "prompt_id"):
        frame = frame.with_columns(_to_text(frame, origin, name))
        _fail_first(frame, frame[name].is_null(), origin, name, f"{name} is null", frame[name])
    raw = frame["score"]
    frame = frame.with_columns(_to_float(frame, origin, "score"))
    score = frame["score"]
    _fail_first(frame, score.is_null(), origin, "score", "score is null", raw)
    _fail_first(frame, score.is_nan(), origin, "score", "score is NaN", raw)
    _fail_first(frame, (score < 0) | (score > 1), origin, "score", "score outside [0, 1]", raw)
    for name in ("prompt", "response", "category", "reference"):
        frame = frame.with_columns(_to_text(frame, origin, name))
    raw = frame["cost_usd"]
    frame = frame.with_columns(_to_float(frame, origin, "cost_usd"))
    _fail_first(frame, frame["cost_usd"].is_nan(), origin, "cost_usd", "cost is NaN", raw)
    _fail_first(frame, frame["cost_usd"].is_infinite(), origin, "cost_usd", "cost is not finite", raw)
    _fail_first(frame, frame["cost_usd"] < 0, origin, "cost_usd", "negative cost", raw)
    for name in ("input_tokens", "output_tokens"):
        raw = frame[name]
        frame = frame.with_columns(_to_int(frame, origin, name))
        _fail_first(frame, frame[name] < 0, origin, name, "negative token count", raw)
        _fail_first(frame, frame[name] > MAX_TOKENS, origin, name, f"token count above {MAX_TOKENS:,}", raw)
    return frame.with_columns(_to_split(frame, origin))


def _to_float(frame: pl.DataFrame, origin: _Origin, name: str) -> pl.Series:
    raw = frame[name]
    if raw.dtype == pl.String:
        lowered = raw.str.strip_chars().str.to_lowercase()
        parsed = (
            pl.select(
                pl.when(lowered == "true")
                .then(1.0)
                .when(lowered == "false")
                .then(0.0)
                .otherwise(lowered.cast(pl.Float64, strict=False))
            )
            .to_series()
            .alias(name)
        )
    elif _is_numeric(raw.dtype) or raw.dtype == pl.Null:
        parsed = raw.cast(pl.Float64)
    else:
        parsed = pl.Series(name, [None] * raw.len(), dtype=pl.Float64)
    _fail_first(frame, raw.is_not_null() & parsed.is_null(), origin, name, f"{name} is not a number", raw)
    return parsed


def _to_int(frame: pl.DataFrame, origin: _Origin, name: str) -> pl.Series:
    raw = frame[name]
    if raw.dtype.is_integer() or raw.dtype == pl.Null:
        return raw.cast(pl.Int64)
    if raw.dtype == pl.Boolean:  # a flag is no count
        _fail_first(frame, raw.is_not_null(), origin, name, f"{name} is not a whole number", raw)
    as_float = _to_float(frame, origin, name)
    whole = as_float.is_finite() & (as_float == as_float.floor())
    _fail_first(frame, raw.is_not_null() & ~whole.fill_null(False), origin, name, f"{name} is not a whole number", raw)
    _fail_first(frame, as_float < 0, origin, name, "negative token count", raw)  # before the cast, however large
    _fail_first(frame, as_float > MAX_TOKENS, origin, name, f"token count above {MAX_TOKENS:,}", raw)
    return as_float.cast(pl.Int64)


def _to_text(frame: pl.DataFrame, origin: _Origin, name: str) -> pl.Series:
    raw = frame[name]
    if raw.dtype == pl.String:
        return raw
    if raw.dtype == pl.List(pl.String):
        return raw.list.join("\n")
    if raw.dtype == pl.Null or raw.dtype.is_numeric() or raw.dtype == pl.Boolean:
        return raw.cast(pl.String)
    _fail_first(frame, raw.is_not_null(), origin, name, f"{name} is not text", raw)
    return pl.Series(name, [None] * raw.len(), dtype=pl.String)


def _to_split(frame: pl.DataFrame, origin: _Origin) -> pl.Series:
    raw = frame["split"]
    split = raw.str.strip_chars().str.to_lowercase().replace_strict(_SPLITS, default=None, return_dtype=pl.String)
    _fail_first(frame, raw.is_not_null() & split.is_null(), origin, "split", "split is not train/validation/test", raw)
    return split


def _finish(chunks: list[tuple[pl.DataFrame, _Origin]]) -> pl.DataFrame:
    """Coerced chunks as one frame: identical repeats dropped, conflicts rejected, sorted."""
    origins = [origin for _, origin in chunks]
    frames = [
        _coerce(frame, origin).select(*RESULT_COLUMNS, pl.col("_row").cast(pl.Int64), pl.lit(i).alias("_origin"))
        for i, (frame, origin) in enumerate(chunks)
    ]
    results = pl.concat(frames).unique(subset=list(RESULT_COLUMNS), keep="first", maintain_order=True)
    _reject_conflicts(results, origins, ["model", "prompt_id"], RESULT_COLUMNS, "duplicate (model, prompt_id) with")
    for name in _PER_PROMPT:
        known = results.filter(pl.col(name).is_not_null())
        _reject_conflicts(known, origins, ["prompt_id"], [name], "the same prompt_id with")
    return results.sort("model", "prompt_id").select(RESULT_COLUMNS)


def _reject_conflicts(
    frame: pl.DataFrame, origins: list[_Origin], key: list[str], compared: Iterable[str], problem: str
) -> None:
    """Raise for the first row that shares ``key`` with an earlier row but differs from it in ``compared``."""
    frame = frame.with_row_index("_at")
    repeated = frame.filter(pl.len().over(key) > 1)
    if repeated.height == 0:
        return
    first = repeated.group_by(key, maintain_order=True).first()
    compared = [name for name in compared if name not in key]
    differs = pl.any_horizontal(pl.col(name).ne_missing(pl.col(f"{name}_first")) for name in compared)
    later = repeated.join(first, on=key, suffix="_first").filter(pl.col("_at") != pl.col("_at_first"), differs)
    for row in later.sort("_at").head(1).iter_rows(named=True):
        for name in compared:
            if row[name] == row[f"{name}_first"]:
                continue
            earlier, origin = origins[row["_origin_first"]], origins[row["_origin"]]
            where = f"{earlier.row_word} {row['_row_first']}"
            where = where if earlier.file == origin.file else f"{earlier.file} {where}"
            before = _show(row[f"{name}_first"], 40)
            raise _row_error(origin, row, name, f"{problem} another {name} than {where} ({before})", row[name])
