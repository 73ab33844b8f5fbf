"""The wide format, as RouterBench publishes it: one row per prompt, one score column per model."""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl

from profiling.results.common import _ALIASES, ResultsError, _is_numeric, _Origin

_WIDE_SUFFIXES = ("total_cost", "model_response")
_WIDE_RESERVED = {"prompt", "eval_name", "category", "reference", "split", "oracle_model_to_route_to"}


def _looks_wide(table: pl.DataFrame) -> bool:
    """No ``model`` column, and ``<m>|...`` columns beside a numeric ``<m>`` (or RouterBench's own suffixes)."""
    if "model" in table.columns:
        return False
    for name in table.columns:
        prefix, bar, suffix = name.rpartition("|")
        if bar and (suffix in _WIDE_SUFFIXES or (prefix in table.columns and _is_numeric(table.schema[prefix]))):
            return True
    return False


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
