"""lm-evaluation-harness ``--log_samples`` output: ``samples_<task>_<timestamp>.jsonl`` files and the
``results_*.json`` beside them that name the model."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from profiling.results.common import RESULT_SCHEMA, ResultsError, _Origin, _row_error, _show

LM_EVAL_METRICS: tuple[str, ...] = ("acc", "exact_match", "pass@1", "acc_norm", "em", "f1")
_STAMP = r"\d{4}-\d{2}-\d{2}T[0-9.:\-]+"
_SAMPLES_NAME = re.compile(rf"^samples_(?P<task>.+?)(?:_(?P<stamp>{_STAMP}))?$")


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
