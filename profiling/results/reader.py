"""Read users' existing evaluation tables into one normalised long frame (parsing only: nothing is written).

:func:`read_results` returns one row per (model, prompt_id) with the columns of :data:`RESULT_SCHEMA`, sorted by
model and prompt_id, or raises :class:`ResultsError`, whose one-line message names the file, the column, the
first bad row (its model and prompt_id) and the value.

Formats (``format="auto"`` tries them in this order):

- **lm-eval**: the ``--log_samples`` output of lm-evaluation-harness, a ``samples_<task>_<timestamp>.jsonl`` file
  or a directory of them (or of one folder per model holding them). Picked for a directory, for a JSONL file named
  ``samples_*`` and for a JSONL file whose first record has ``doc_id`` and ``arguments`` or ``resps``.
  prompt_id is ``<task>/<doc_id>`` (task from a record's ``task`` key, else from the file name), category the
  task, prompt the context string of ``arguments`` (old list and new ``gen_args_0`` shapes), response the first
  string of ``resps`` (``filtered_resps`` when absent; none for log-likelihood pairs), reference ``target``. The
  score is ``score_field`` (``"metric"`` or lm-eval's own ``"metric,filter"``), else the first present of
  :data:`LM_EVAL_METRICS`; with several filters, the first one in the file unless ``score_field`` names one. The
  model is ``model=``, else the ``model_name`` or ``config.model_args`` ``pretrained=`` of the ``results_*.json``
  beside the samples (the one with the same timestamp when there are several).
- **long** (Parquet, CSV, JSONL/NDJSON): a ``model`` column, or none and ``model=`` given. Aliases, used when the
  canonical column is absent, first match wins: prompt_id <- ``question_id``, ``sample_id``, ``id``;
  score <- ``correct``; cost_usd <- ``cost``; input_tokens <- ``prompt_tokens``; output_tokens <-
  ``completion_tokens``. ``score_field`` names another score column.
- **wide** (Parquet, CSV), as RouterBench publishes it: picked when there is no ``model`` column and some column
  ``<m>|...`` has a numeric column ``<m>`` beside it, or a ``<m>|total_cost`` or ``<m>|model_response`` column
  exists. One row per prompt: ``sample_id`` (or a prompt_id alias), ``prompt`` (a list of strings, or one
  stringified as ``"['...']"``, is joined with newlines), optional ``eval_name`` (the category), then per model
  ``<m>`` (score), ``<m>|model_response`` and ``<m>|total_cost`` (USD per query); other columns are ignored. With
  ``format="wide"`` and no ``<m>|...`` columns, every other numeric column is a model's score.

Scores may be booleans or 0/1; costs and token counts are finite and not negative (NaN and infinity are refused);
split values are train/validation/test (``val``, ``valid``, ``dev`` read as validation). Rows repeated identically
are dropped; a prompt_id must keep one prompt, category, reference and split across models.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["LM_EVAL_METRICS", "RESULT_COLUMNS", "RESULT_SCHEMA", "ResultsError", "read_results"]

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
LM_EVAL_METRICS: tuple[str, ...] = ("acc", "exact_match", "pass@1", "acc_norm", "em", "f1")
#: The most tokens one answer may count (the warehouse stores them as 32-bit integers).
MAX_TOKENS = 2**31 - 1

FORMATS = ("auto", "long", "wide", "lm-eval")
_TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".jsonl", ".ndjson")
_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt_id": ("prompt_id", "question_id", "sample_id", "id"),
    "score": ("score", "correct"),
    "cost_usd": ("cost_usd", "cost"),
    "input_tokens": ("input_tokens", "prompt_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens"),
}
_TEXT_COLUMNS = ("model", "prompt_id", "prompt", "response", "category", "reference", "split")
_PER_PROMPT = ("prompt", "category", "reference", "split")
_SPLITS = {"train": "train", "test": "test", **dict.fromkeys(("validation", "val", "valid", "dev"), "validation")}
_WIDE_SUFFIXES = ("total_cost", "model_response")
_WIDE_RESERVED = {"prompt", "eval_name", "category", "reference", "split", "oracle_model_to_route_to"}
_STAMP = r"\d{4}-\d{2}-\d{2}T[0-9.:\-]+"
_SAMPLES_NAME = re.compile(rf"^samples_(?P<task>.+?)(?:_(?P<stamp>{_STAMP}))?$")


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
        ``"auto"`` (detected as the module docstring says), ``"long"``, ``"wide"`` or ``"lm-eval"``.
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
        table = _read_table(path)
        if fmt == "auto":
            fmt = "wide" if _looks_wide(table) else "long"
        read = _wide_frames if fmt == "wide" else _long_frames
        chunks = read(table, path, model, score_field)
    return _finish(chunks)


# --- detection and reading -------------------------------------------------------------------------------------


def _detect_before_reading(path: Path) -> str:
    """``"lm-eval"`` when the path is one, else ``"auto"`` (decided once the table is read)."""
    if path.is_dir():
        return "lm-eval"
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        if path.name.startswith("samples_"):
            return "lm-eval"
        first = _first_json_line(path)
        if isinstance(first, dict) and "doc_id" in first and ("arguments" in first or "resps" in first):
            return "lm-eval"
    return "auto"


def _first_json_line(path: Path) -> Any:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def _read_table(path: Path) -> pl.DataFrame:
    """A Parquet, CSV or JSONL file as read by polars (CSV text columns kept as text: ids keep leading zeros)."""
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
            text = {name: pl.String() for name in (*_TEXT_COLUMNS, *_ALIASES["prompt_id"], "eval_name")}
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


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype == pl.Boolean


def _looks_wide(table: pl.DataFrame) -> bool:
    """No ``model`` column, and ``<m>|...`` columns beside a numeric ``<m>`` (or RouterBench's own suffixes)."""
    if "model" in table.columns:
        return False
    for name in table.columns:
        prefix, bar, suffix = name.rpartition("|")
        if bar and (suffix in _WIDE_SUFFIXES or (prefix in table.columns and _is_numeric(table.schema[prefix]))):
            return True
    return False


# --- the three formats -----------------------------------------------------------------------------------------


def _long_frames(
    table: pl.DataFrame, path: Path, model: str | None, score_field: str | None
) -> list[tuple[pl.DataFrame, _Origin]]:
    """The long table's columns under their canonical names (aliases resolved)."""
    sources: dict[str, str] = {}
    for name, candidates in _ALIASES.items():
        found = next((c for c in candidates if c in table.columns), None)
        if found is not None:
            sources[name] = found
    for name in ("model", "prompt", "response", "category", "reference", "split"):
        if name in table.columns:
            sources[name] = name
    if score_field is not None:
        if score_field not in table.columns:
            raise ResultsError(
                f"{path}: score_field {score_field!r} is not a column (have {table.columns})",
                path=str(path),
                column=score_field,
            )
        sources["score"] = score_field
    if model is not None:
        if "model" in sources:
            raise ResultsError(
                f"{path}: the file has a 'model' column; model={model!r} applies only to files without one",
                path=str(path),
                column="model",
                value=model,
            )
        sources["model"] = "model"
    missing = [name for name in ("model", "prompt_id", "score") if name not in sources]
    if missing:
        hint = " or pass model=" if "model" in missing else ""
        raise ResultsError(
            f"{path}: missing column(s) {missing}{hint} (have {table.columns}); aliases: "
            + "; ".join(f"{k} <- {', '.join(v[1:])}" for k, v in _ALIASES.items()),
            path=str(path),
            column=missing[0],
        )
    frame = table.with_row_index("_row", offset=1).select(
        *(
            pl.lit(model).alias(n) if n == "model" and model is not None else pl.col(s).alias(n)
            for n, s in sources.items()
        ),
        "_row",
    )
    return [(frame, _Origin(str(path), "row", sources))]


def _wide_frames(
    table: pl.DataFrame, path: Path, model: str | None, score_field: str | None
) -> list[tuple[pl.DataFrame, _Origin]]:
    """One long frame per model column of a RouterBench-style wide table."""
    if model is not None or score_field is not None:
        given = "model" if model is not None else "score_field"
        raise ResultsError(
            f"{path}: {given}= does not apply to a wide file, whose models are its score columns",
            path=str(path),
            value=model if model is not None else score_field,
        )
    id_column = next((c for c in _ALIASES["prompt_id"] if c in table.columns), None)
    if id_column is None:
        raise ResultsError(
            f"{path}: missing column 'sample_id' (or {list(_ALIASES['prompt_id'])}) of a wide file (have "
            f"{table.columns})",
            path=str(path),
            column="sample_id",
        )
    models: list[str] = []
    for name in table.columns:
        prefix, bar, _ = name.rpartition("|")
        if not bar:
            continue
        if prefix not in table.columns:
            raise ResultsError(
                f"{path}: column {name!r} has no score column {prefix!r} beside it (have {table.columns})",
                path=str(path),
                column=name,
            )
        if prefix not in models:
            models.append(prefix)
    if not models:
        reserved = _WIDE_RESERVED | set(_ALIASES["prompt_id"])
        models = [
            c
            for c in table.columns
            if c not in reserved and not c.startswith("__index_level") and _is_numeric(table.schema[c])
        ]
    if not models:
        raise ResultsError(f"{path}: no model score columns in a wide file (have {table.columns})", path=str(path))
    table = table.with_row_index("_row", offset=1)
    if "prompt" in table.columns and table.schema["prompt"] == pl.String:
        table = table.with_columns(pl.col("prompt").map_elements(_list_text, return_dtype=pl.String))
    shared = {"prompt_id": id_column}
    for name, source in (("prompt", "prompt"), ("category", "eval_name"), ("category", "category")):
        if source in table.columns and name not in shared:
            shared[name] = source
    for name in ("reference", "split"):
        if name in table.columns:
            shared[name] = name
    chunks = []
    for m in models:
        own = {"score": m, "response": f"{m}|model_response", "cost_usd": f"{m}|total_cost"}
        sources = {**shared, **{name: source for name, source in own.items() if source in table.columns}}
        frame = table.select(pl.lit(m).alias("model"), *(pl.col(s).alias(n) for n, s in sources.items()), "_row")
        chunks.append((frame, _Origin(str(path), "row", sources)))
    return chunks


def _list_text(text: str | None) -> str | None:
    """The joined strings of a stringified list of strings (RouterBench prompts), else the text itself."""
    if text is None:
        return None
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return text
    try:
        items = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    if isinstance(items, list | tuple) and items and all(isinstance(item, str) for item in items):
        return "\n".join(items)
    return text


def _read_lm_eval(path: Path, model: str | None, score_field: str | None) -> list[tuple[pl.DataFrame, _Origin]]:
    """Frames of every ``samples_*.jsonl`` at ``path`` (a file or a directory)."""
    if path.is_dir():
        files = sorted(path.glob("samples_*.jsonl")) or sorted(path.glob("*/samples_*.jsonl"))
        if not files:
            raise ResultsError(f"{path}: no lm-eval samples_*.jsonl files in this directory", path=str(path))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        files = [path]
    else:
        raise ResultsError(
            f"{path}: unsupported file suffix {path.suffix!r} for lm-eval samples; use .jsonl or a directory",
            path=str(path),
            value=path.suffix,
        )
    return [_lm_eval_file(f, model or _lm_eval_model(f), score_field) for f in files]


def _lm_eval_model(samples: Path) -> str:
    """The model named by the ``results_*.json`` beside ``samples`` (the same run's when there are several)."""
    results = sorted(samples.parent.glob("results_*.json"))
    match = _SAMPLES_NAME.match(samples.stem)
    stamp = match["stamp"] if match else None
    same_run = [r for r in results if stamp and r.stem == f"results_{stamp}"]
    names = {_model_from_results(r) for r in (same_run or results)} - {None}
    if len(names) == 1:
        return names.pop()
    if not names:
        found = f"{[r.name for r in results]} name no model" if results else "no results_*.json beside it"
        raise ResultsError(f"{samples}: no model name ({found}); pass model=", path=str(samples), column="model")
    raise ResultsError(
        f"{samples}: the results_*.json beside it name several models {sorted(names)}; pass model=",
        path=str(samples),
        column="model",
        value=sorted(names),
    )


def _model_from_results(path: Path) -> str | None:
    """``model_name``, else ``config.model_args``'s ``pretrained`` (or ``model``) of an lm-eval results file."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not a JSON results file: {e}", path=str(path)) from e
    name = results.get("model_name") if isinstance(results, dict) else None
    if isinstance(name, str) and name:
        return name
    config = results.get("config") if isinstance(results, dict) else None
    args = config.get("model_args") if isinstance(config, dict) else None
    if isinstance(args, str):
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    if isinstance(args, dict):
        for key in ("pretrained", "model"):
            if isinstance(args.get(key), str) and args[key]:
                return args[key].strip()
    return None


def _lm_eval_file(path: Path, model: str, score_field: str | None) -> tuple[pl.DataFrame, _Origin]:
    """One samples file as canonical columns, with its line numbers."""
    records = _json_lines(path)
    if not records:
        raise ResultsError(f"{path}: empty file", path=str(path))
    metric, _, wanted = (score_field or "").partition(",")
    metric, wanted_filter = metric or None, wanted or None
    first_line, first = records[0]
    if metric is None:
        metric = next((m for m in LM_EVAL_METRICS if m in first), None)
        if metric is None:
            raise ResultsError(
                f"{path}: line {first_line}: no score field among {list(LM_EVAL_METRICS)} (have {sorted(first)}); "
                "pass score_field=",
                path=str(path),
                row=f"line {first_line}",
            )
    filters = list(dict.fromkeys(r["filter"] for _, r in records if "filter" in r))
    if wanted_filter is not None and wanted_filter not in filters:
        raise ResultsError(
            f"{path}: no records with filter {wanted_filter!r} (have {filters})",
            path=str(path),
            column="filter",
            value=wanted_filter,
        )
    keep = wanted_filter or (filters[0] if filters else None)
    match = _SAMPLES_NAME.match(path.stem)
    origin = _Origin(
        str(path),
        "line",
        {"score": metric, "prompt_id": "doc_id", "prompt": "arguments", "response": "resps", "reference": "target"},
    )
    rows = []
    for line, record in records:
        if keep is not None and record.get("filter", keep) != keep:
            continue
        task = record.get("task") if isinstance(record.get("task"), str) else (match["task"] if match else None)
        if task is None:
            raise ResultsError(f"{path}: no task in the file name or line {line}", path=str(path), column="task")
        if record.get("doc_id") is None:
            raise ResultsError(
                f"{path}: column 'doc_id', line {line}: missing doc_id (have {sorted(record)})",
                path=str(path),
                column="doc_id",
                row=f"line {line}",
            )
        row = {"model": model, "prompt_id": f"{task}/{record['doc_id']}", "_row": line}
        row["score"] = _metric_value(record.get(metric), origin, row)
        target = record.get("target")
        rows.append(
            {
                **row,
                "prompt": _first_string(record.get("arguments")),
                "response": _lm_eval_response(record),
                "category": task,
                "reference": target if isinstance(target, str) or target is None else json.dumps(target),
            }
        )
    schema = {n: RESULT_SCHEMA[n] for n in ("model", "prompt_id", "score", "prompt", "response", "category")}
    schema |= {"reference": pl.String(), "_row": pl.Int64()}
    return pl.DataFrame(rows, schema=schema), origin


def _json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultsError(
                    f"{path}: line {number}: not JSON ({e.msg})", path=str(path), row=f"line {number}"
                ) from e
            if not isinstance(record, dict):
                raise ResultsError(
                    f"{path}: line {number}: not a JSON object: {_show(record)}",
                    path=str(path),
                    row=f"line {number}",
                    value=record,
                )
            records.append((number, record))
    return records


def _metric_value(value: Any, origin: _Origin, row: dict[str, Any]) -> float | None:
    """A metric as a float (booleans are 0/1); ``None`` stays (rejected later as a null score)."""
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, bool | int):
        return float(value)
    raise _row_error(origin, row, "score", "score is not a number", value)


def _first_string(value: Any) -> str | None:
    """The first string in nested lists and dicts (dicts in key order): the context of lm-eval's arguments."""
    if isinstance(value, str):
        return value
    items: Iterable[Any] = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = _first_string(item)
        if found is not None:
            return found
    return None


def _lm_eval_response(record: dict[str, Any]) -> str | None:
    """The model's output text; none for log-likelihood requests, whose responses are (logprob, is_greedy) pairs."""
    resps = record.get("resps", record.get("filtered_resps"))
    node = resps
    while isinstance(node, list) and node and isinstance(node[0], list):
        node = node[0]
    if isinstance(node, list) and len(node) == 2 and str(node[1]) in ("True", "False"):
        return None
    return _first_string(resps)


# --- coercion and validation -----------------------------------------------------------------------------------


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
