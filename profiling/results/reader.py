"""Which format a path holds, and reading it: :func:`read_results`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from profiling.results.common import _ALIASES, ResultsError, _finish
from profiling.results.lm_eval import _detect_before_reading, _read_lm_eval
from profiling.results.long import _long_frames
from profiling.results.wide import _looks_wide, _wide_frames

FORMATS = ("auto", "long", "wide", "lm-eval")
_TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".jsonl", ".ndjson")
_TEXT_COLUMNS = ("model", "prompt_id", "prompt", "response", "category", "reference", "split")


def read_results(
    path: str | os.PathLike[str],
    format: str = "auto",
    *,
    model: str | None = None,
    score_field: str | None = None,
) -> pl.DataFrame:
    """Read an evaluation table (long, RouterBench-style wide, or lm-eval samples) into :data:`RESULT_SCHEMA`.

    Parameters
    ----------
    path
        A Parquet, CSV or JSONL/NDJSON file, or a directory of lm-eval ``samples_*.jsonl`` files.
    format
        ``"auto"`` (detected as :mod:`profiling.results` says), ``"long"``, ``"wide"`` or ``"lm-eval"``.
    model
        The model's name when the file has none (long without a ``model`` column, lm-eval samples).
    score_field
        The column (long) or metric (lm-eval, ``"metric"`` or ``"metric,filter"``) to take as the score.

    Returns
    -------
    pl.DataFrame
        The columns :data:`RESULT_COLUMNS`, one row per (model, prompt_id), sorted by both.

    Raises
    ------
    ResultsError
        On anything the file cannot mean: its message names the file, the column, the row and the value.
    """
    path = Path(path)
    fmt = format.replace("_", "-").lower()
    if fmt not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {list(FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if fmt == "auto":
        fmt = _detect_before_reading(path)
    if fmt == "lm-eval":
        chunks = _read_lm_eval(path, model, score_field)
    else:
        table = read_table(path)
        if fmt == "auto":
            fmt = "wide" if _looks_wide(table) else "long"
        read = _wide_frames if fmt == "wide" else _long_frames
        chunks = read(table, path, model, score_field)
    return _finish(chunks)


def read_table(path: Path, text_columns: Iterable[str] | None = None) -> pl.DataFrame:
    """A Parquet, CSV or JSONL file as read by polars; a CSV's ``text_columns`` (default: the results' ids and text)
    are kept as text, so ids keep leading zeros. :class:`ResultsError` names the file when it cannot be read."""
    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in _TABLE_SUFFIXES:
        hint = " (a pickle: convert it with pandas.read_pickle(path).to_parquet(...))" if suffix == ".pkl" else ""
        raise ResultsError(
            f"{path}: unsupported file suffix {suffix or path.name!r}; use one of {list(_TABLE_SUFFIXES)}{hint}",
            path=str(path),
            value=suffix,
        )
    if path.stat().st_size == 0 or (suffix in (".jsonl", ".ndjson") and _only_blank_lines(path)):
        raise ResultsError(f"{path}: empty file", path=str(path))
    try:
        if suffix in (".parquet", ".pq"):
            table = pl.read_parquet(path)
        elif suffix == ".csv":
            names = (*_TEXT_COLUMNS, *_ALIASES["prompt_id"], "eval_name") if text_columns is None else text_columns
            text = dict.fromkeys(names, pl.String())
            table = pl.read_csv(path, schema_overrides=text, infer_schema_length=None)
        else:
            table = pl.read_ndjson(path, infer_schema_length=None)
    except pl.exceptions.NoDataError as e:
        raise ResultsError(f"{path}: empty file", path=str(path)) from e
    except (pl.exceptions.PolarsError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ResultsError(f"{path}: cannot read as {suffix[1:]}: {first_line}", path=str(path)) from e
    if table.height == 0:
        raise ResultsError(f"{path}: empty file (columns {table.columns}, no rows)", path=str(path))
    return table


def _only_blank_lines(path: Path) -> bool:
    with path.open("rb") as lines:
        return not any(line.strip() for line in lines)
