"""Sampled traffic, opt-in: the prompts and answers of a sample of routed requests, STORED USER TEXT.

Off by default (``uniroute serve --traffic-sample-rate 0``). With a rate R > 0 the gateway keeps the routed
requests (model ``uniroute``) whose id falls in the sample (:func:`sampled`: a hash of the request id, so the
choice is the same in every worker and on every replay), except those of a client key with ``store: false``
(which wins over the rate). A record holds the request's messages, the text the router embedded, the answer, the
LLM and the request id; the request only hands over what it already has (the answer's JSON, or a stream's bytes):
the text is taken out and encoded in the :class:`TrafficLog`'s writer thread, never on the request path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

import warehouse as wh
from openai_compat import parse_body
from serving.recordlog import RecordLog, read_record_files, record_files

__all__ = [
    "SCHEMA",
    "TrafficLog",
    "answer_text",
    "check_rate",
    "default_directory",
    "expire_traffic_files",
    "read_traffic",
    "read_traffic_files",
    "sampled",
    "traffic_files",
]

#: The columns of a traffic file (the warehouse's ``traffic_samples`` calls ``at`` ``sampled_at``).
SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "at": pl.Datetime("us", "UTC"),
    "key_id": pl.String(),
    "router_version": pl.String(),
    "chosen_llm": pl.String(),
    "prompt": pl.String(),  # the text the router embedded (the last user message's)
    "messages": pl.String(),  # JSON of the request's messages
    "answer": pl.String(),  # the answer's text; a stream's pieces joined
    "embedder_id": pl.String(),
    "cluster_weights": pl.List(pl.Float64()),
}
PREFIX = "traffic-"
_SCALE = float(2**64)


def default_directory() -> Path:
    """Where the gateway writes traffic files and the warehouse asset reads them: ``<warehouse dir>/traffic``."""
    return wh.default_path().parent / "traffic"


def check_rate(rate: object) -> float:
    """``rate`` as a sample rate in [0, 1]; ``ValueError`` naming the value otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ValueError(f"traffic sample rate {rate!r}: expected a number in [0, 1] (0: store no traffic)")
    return float(rate)


def sampled(request_id: str, rate: float) -> bool:
    """Whether the request ``request_id`` is in a sample of ``rate``: the first 8 bytes of its id's SHA-256, as a
    fraction of 2**64, below the rate (never at 0, always at 1)."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE < rate


def answer_text(answer: object) -> str | None:
    """The text of an answer as the gateway got it: an OpenAI chat completion's JSON (its first choice's message),
    or the bytes of a stream (its ``data:`` events' first-choice deltas, joined); None when it holds none."""
    if isinstance(answer, Mapping):
        choices = answer.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None
    if isinstance(answer, bytes | bytearray):
        return _stream_text(bytes(answer))
    return None


def _stream_text(data: bytes) -> str | None:
    pieces = []
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        try:
            event = parse_body(line[5:].encode())  # None for what is not JSON or nests too deep
            content = ((event.get("choices") or [{}])[0].get("delta") or {}).get("content")
        except (AttributeError, IndexError, TypeError):
            continue
        if isinstance(content, str):
            pieces.append(content)
    return "".join(pieces) if pieces else None


def _normalise(record: Mapping) -> dict:
    row = {name: record.get(name) for name in SCHEMA}
    if not row["request_id"]:
        raise ValueError("a traffic record needs a request_id")
    if row["messages"] is not None and not isinstance(row["messages"], str):
        row["messages"] = json.dumps(row["messages"], ensure_ascii=False)
    if not isinstance(row["answer"], str | None):
        row["answer"] = answer_text(row["answer"])
    at = row["at"] or datetime.now(UTC)
    row["at"] = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return row


class TrafficLog(RecordLog):
    """Traffic records written off the request path to ``traffic-*.parquet`` files of :data:`SCHEMA` in
    ``directory`` (default :func:`default_directory`; parameters as :class:`serving.recordlog.RecordLog`'s:
    ``metrics`` hears its queue and drops as ``log="traffic"``). A record's ``messages`` may be the list and its
    ``answer`` the answer's JSON or a stream's bytes: the writer thread turns them into text."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, **options: object) -> None:
        super().__init__(directory or default_directory(), SCHEMA, PREFIX, _normalise, kind="traffic", **options)


def traffic_files(directory: str | os.PathLike[str] | None = None, *, loaded: bool = False) -> list[Path]:
    """The finished traffic files in ``directory`` (default :func:`default_directory`), sorted by name;
    ``loaded``: those moved to its ``loaded/`` folder too."""
    return record_files(directory or default_directory(), PREFIX, loaded=loaded)


def read_traffic_files(files: Iterable[Path]) -> pl.DataFrame:
    """Traffic files as one frame of :data:`SCHEMA`, one row per request id (the first file's, if repeated)."""
    return read_record_files(files, SCHEMA).unique(subset="request_id", keep="first", maintain_order=True)


def read_traffic(directory: str | os.PathLike[str] | None = None) -> pl.DataFrame:
    """Every finished traffic file in ``directory`` (default :func:`default_directory`) as one frame."""
    return read_traffic_files(traffic_files(directory))


def expire_traffic_files(directory: str | os.PathLike[str], cutoff: datetime) -> tuple[int, int]:
    """Remove the sampled requests before ``cutoff`` (naive UTC) from the traffic files in ``directory`` and its
    ``loaded/``: a file all before it is deleted, one partly before it rewritten without them (under a temporary
    name, then renamed). Returns (files deleted, files rewritten)."""
    deleted = rewritten = 0
    directory = Path(directory)
    for file in traffic_files(directory, loaded=True):
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
