"""The gateway's feedback and sampled-traffic files, as the assets that load them read, move and expire them.

The gateway writes each file under a temporary name and renames it into place (``<prefix><host>-<pid>-...``), so a
reader globbing ``<prefix>*.parquet`` never sees half a file. Files once loaded move to the directory's
``loaded/``; sampled-traffic files hold user text, so retention rewrites or deletes them there too.
"""

# The schemas and directories below copy issue 25's contract: once serving's feedback and traffic writers exist,
# take their SCHEMA and default_directory() from there (assets may import serving) and drop the copies.

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import polars as pl

import warehouse as wh

FEEDBACK_PREFIX, TRAFFIC_PREFIX = "feedback-", "traffic-"
#: A feedback file's columns: one rating per row (``source``: "api" from the gateway).
FEEDBACK_SCHEMA: dict[str, pl.DataType] = {
    "feedback_id": pl.String(),
    "request_id": pl.String(),
    "key_id": pl.String(),
    "score": pl.Float64(),
    "at": pl.Datetime("us", "UTC"),
    "source": pl.String(),
}
#: A sampled-traffic file's columns: one sampled request per row, its text included.
TRAFFIC_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "at": pl.Datetime("us", "UTC"),
    "key_id": pl.String(),
    "router_version": pl.String(),
    "chosen_llm": pl.String(),
    "prompt": pl.String(),
    "messages": pl.String(),
    "answer": pl.String(),
    "embedder_id": pl.String(),
    "cluster_weights": pl.List(pl.Float64()),
}
LOADED = "loaded"


def default_directory(kind: str) -> Path:
    """Where the gateway writes ``kind`` ("feedback" or "traffic") files: ``<warehouse dir>/<kind>``."""
    return wh.default_path().parent / kind


def record_files(directory: str | os.PathLike[str], prefix: str) -> list[Path]:
    """The finished ``<prefix>*.parquet`` files in ``directory`` (temporary ones left out), sorted by name."""
    return sorted(Path(directory).glob(f"{prefix}*.parquet"))


def read_record_files(files: Sequence[Path], schema: dict[str, pl.DataType], key: str) -> pl.DataFrame:
    """``files`` as one frame of ``schema`` (columns a file lacks read as null), one row per ``key`` (the first)."""
    if not files:
        return pl.DataFrame(schema=schema)
    frames = []
    for file in files:
        frame = pl.read_parquet(file)
        missing = [pl.lit(None, dtype=d).alias(n) for n, d in schema.items() if n not in frame.columns]
        frames.append(frame.with_columns(missing).select(list(schema)).cast(schema))
    return pl.concat(frames).unique(subset=key, keep="first", maintain_order=True)


def move_to_loaded(files: Sequence[Path]) -> int:
    """Move ``files`` (all of one directory) to its ``loaded/`` folder; how many were moved. Call it once their
    rows are committed: a crash before reloads them, which stores nothing new."""
    for file in files:
        done = file.parent / LOADED
        done.mkdir(exist_ok=True)
        os.replace(file, done / file.name)
    return len(files)


def expire_traffic_files(directory: str | os.PathLike[str], cutoff: datetime) -> tuple[int, int]:
    """Remove the sampled requests before ``cutoff`` (naive UTC) from the traffic files in ``directory`` and its
    ``loaded/``: a file all before it is deleted, one partly before it rewritten without them (under a temporary
    name, then renamed). Returns (files deleted, files rewritten)."""
    deleted = rewritten = 0
    directory = Path(directory)
    for file in [*record_files(directory, TRAFFIC_PREFIX), *record_files(directory / LOADED, TRAFFIC_PREFIX)]:
        frame = pl.read_parquet(file)
        kept = frame.filter(_naive_utc(frame["at"]) >= cutoff)
        if kept.height == frame.height:
            continue
        if kept.height == 0:
            file.unlink()
            deleted += 1
            continue
        temporary = file.with_name(f".{file.name}.tmp")
        kept.write_parquet(temporary)
        os.replace(temporary, file)
        rewritten += 1
    return deleted, rewritten


def _naive_utc(times: pl.Series) -> pl.Series:
    """``times`` as naive UTC (aware ones converted; naive ones are UTC already)."""
    if isinstance(times.dtype, pl.Datetime) and times.dtype.time_zone is not None:
        return times.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return times
