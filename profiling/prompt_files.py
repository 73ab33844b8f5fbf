"""A prompt file read (JSONL, CSV or Parquet; the columns :mod:`profiling.datasets` describes) and one row rendered
into the request sent, the prompt shown and the text the router embeds, by a dataset's spec."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from router_core import prompt_hash

if TYPE_CHECKING:
    from profiling.datasets import DatasetSpec

__all__ = ["FILE_COLUMNS", "PromptSetError", "normalise_rows", "read_prompt_file", "render", "request_hash"]

#: The prompt file's own columns; every other column is metadata.
FILE_COLUMNS = (
    "prompt_id",
    "prompt",
    "messages",
    "reference",
    "grader",
    "grader_options",
    "category",
    "split",
    "tests",
)
_READERS = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson}


class PromptSetError(ValueError):
    """A prompt file or spec is invalid; the message names the row (prompt_id), the field and the value."""


# ---- reading a prompt file ---------------------------------------------------------------------------------
def read_prompt_file(path: str | os.PathLike[str]) -> pl.DataFrame:
    """The rows of a prompt file: its own columns as text (missing ones null) plus ``metadata`` (JSON)."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise PromptSetError(f"file={str(path)!r}: unsupported format; use one of {sorted(_READERS)}")
    if not path.is_file():
        raise PromptSetError(f"file={str(path)!r}: not found")
    try:
        frame = reader(path)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise PromptSetError(f"file={str(path)!r}: cannot be read ({str(exc).splitlines()[0]})") from None
    return normalise_rows(frame, path.name)


def normalise_rows(frame: pl.DataFrame, source: str = "rows") -> pl.DataFrame:
    """Rows in the file format as text columns (JSON for messages, grader_options and metadata)."""
    if "prompt_id" not in frame.columns:
        raise PromptSetError(f"{source}: missing column 'prompt_id' (have {frame.columns})")
    if "prompt" not in frame.columns and "messages" not in frame.columns:
        raise PromptSetError(f"{source}: needs a 'prompt' or a 'messages' column (have {frame.columns})")
    extra = [c for c in frame.columns if c not in FILE_COLUMNS]
    rows = frame.to_dicts()
    out = []
    for row in rows:
        item = {c: row.get(c) for c in FILE_COLUMNS}
        for column in ("messages", "grader_options"):
            if item[column] is not None and not isinstance(item[column], str):
                item[column] = json.dumps(item[column])
        item["metadata"] = json.dumps({c: row[c] for c in extra}, default=str) if extra else None
        for column in ("prompt_id", "reference", "category", "split", "tests", "grader", "prompt"):
            if item[column] is not None and not isinstance(item[column], str):
                item[column] = _text(item[column])
        out.append(item)
    schema = dict.fromkeys((*FILE_COLUMNS, "metadata"), pl.String)
    return pl.DataFrame(out, schema=schema) if out else pl.DataFrame(schema=schema)


def _text(value: Any) -> str:
    """A scalar as text: integral floats without their ``.0`` (ids and references read from CSV)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


# ---- rendering ---------------------------------------------------------------------------------------------
def _messages(row: Mapping[str, Any], where: str) -> list[dict[str, str]] | None:
    if row.get("messages") is None:
        return None
    try:
        messages = json.loads(row["messages"])
    except ValueError:
        raise PromptSetError(f"{where}: messages={row['messages']!r:.80}: not valid JSON") from None
    ok = (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    )
    if not ok:
        raise PromptSetError(f"{where}: messages={row['messages']!r:.80}: expected a list of {{role, content}} strings")
    if not any(m["role"] == "user" for m in messages):
        raise PromptSetError(f"{where}: messages: no message with role 'user'")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(spec: DatasetSpec, row: Mapping[str, Any], where: str = "row") -> tuple[list[dict[str, str]], str, str]:
    """What is sent for one row, and what the router sees: (chat messages, the user turn, router text)."""
    given = _messages(row, where)
    metadata = json.loads(row["metadata"]) if row.get("metadata") else {}
    if given is not None:
        prompt = next(m["content"] for m in reversed(given) if m["role"] == "user")
        messages = given
        if spec.system_prompt and given[0]["role"] != "system":
            messages = [{"role": "system", "content": spec.system_prompt}, *given]
        user = prompt
    else:
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptSetError(f"{where}: prompt={prompt!r}: must be non-empty text")
        # a null value is a missing field (an error naming it), never the text "None"
        fields = {k: v for k, v in {**metadata, **row}.items() if k != "metadata" and v is not None}
        try:
            user = spec.template.format_map(fields)
        except KeyError as exc:
            raise PromptSetError(f"{where}: template field {exc.args[0]!r}: no such column in the row") from None
        except (ValueError, IndexError) as exc:
            raise PromptSetError(f"spec.template={spec.template!r}: {exc}") from None
        messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
        for shot in spec.few_shot:
            messages += [{"role": "user", "content": shot["prompt"]}, {"role": "assistant", "content": shot["answer"]}]
        messages.append({"role": "user", "content": user})
    kind, _, arg = spec.router_text.partition(":")
    if kind == "field":
        value = {**metadata, **row}.get(arg)
        if value is None or not str(value).strip():
            raise PromptSetError(f"{where}: router_text field {arg!r}: missing or empty in the row")
        text = str(value)
    else:
        text = {"prompt": prompt, "rendered": user}.get(kind) or prompt[-int(arg) :]
    if not text.strip():
        raise PromptSetError(f"{where}: router text is empty (router_text={spec.router_text!r})")
    return messages, user, text


def request_hash(messages: list[dict[str, str]], params: Mapping[str, Any]) -> str:
    """The identity of a request: an answer to another one is stale."""
    return prompt_hash(json.dumps({"messages": messages, "params": dict(params)}, sort_keys=True))
