"""The long format (Parquet, CSV, JSONL/NDJSON): one row per (model, prompt_id), aliases resolved."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from profiling.results.common import _ALIASES, ResultsError, _Origin


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
