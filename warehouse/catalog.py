"""The LLM catalog: a user-edited ``llms.yaml`` (or CSV), validated before anything reaches the database.

YAML layout (``defaults`` apply to every entry; an entry's own keys win)::

    defaults:
      base_url: http://127.0.0.1:8765/v1
      max_concurrency: 32
    llms:
      - name: gemini-1.5-flash-002
        usd_per_mtok_in: 0.19
        usd_per_mtok_out: 0.19
        api_key_env: GEMINI_API_KEY     # the NAME of the variable holding the key, never the key

CSV: one row per LLM with the same column names. ``model_id`` defaults to ``name``.

An LLM that exists only as imported results (``uniroute import-results``) needs no endpoint: leave out
``base_url`` (nothing will ever ask it anything) and, where the results carry per-query USD costs, its prices.
An entry with a ``base_url`` needs both prices: they price the answers collected from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    ValidationError,
)

from warehouse.store import sync_llms

__all__ = ["CatalogError", "LLMEntry", "add_to_catalog", "load_catalog", "sync_catalog"]


class CatalogError(ValueError):
    """The catalog is invalid; ``problems`` lists each one as 'entry <name> (#i): <field>: <message>'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid LLM catalog {source}:\n  " + "\n  ".join(problems))


class LLMEntry(BaseModel):
    """One LLM behind an OpenAI-compatible endpoint."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1)
    base_url: AnyHttpUrl | None = None  # None: import-only (results, no endpoint)
    model_id: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    usd_per_mtok_in: NonNegativeFloat | None = None
    usd_per_mtok_out: NonNegativeFloat | None = None
    max_concurrency: PositiveInt = 16
    requests_per_minute: PositiveInt | None = None
    active: bool = True


_EMPTY_SCHEMA = {
    **dict.fromkeys(("name", "base_url", "model_id", "api_key_env"), pl.String),
    **dict.fromkeys(("usd_per_mtok_in", "usd_per_mtok_out"), pl.Float64),
    **dict.fromkeys(("max_concurrency", "requests_per_minute"), pl.Int64),
    "active": pl.Boolean,
}


def _read_entries(path: Path) -> list[Mapping[str, Any]]:
    if path.suffix.lower() == ".csv":
        return [{k: v for k, v in row.items() if v is not None} for row in pl.read_csv(path).iter_rows(named=True)]
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, Mapping) or "llms" not in document or not isinstance(document["llms"] or [], list):
        raise CatalogError(str(path), ["top level: expected a mapping with a list under 'llms'"])
    defaults = document.get("defaults") or {}
    entries = document["llms"] or []  # "llms:" with nothing under it: an empty catalog
    return [{**defaults, **entry} if isinstance(entry, Mapping) else entry for entry in entries]


def load_catalog(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> pl.DataFrame:
    """Validate the catalog at ``path``; returns the frame ``warehouse.sync_llms`` takes.

    Every problem is collected and raised together in one :class:`CatalogError`: missing or negative prices,
    duplicate names, malformed URLs, unknown keys, and an ``api_key_env`` whose variable is not set.
    """
    path = Path(path)
    if not path.exists():
        raise CatalogError(str(path), ["file not found"])
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    entries: list[LLMEntry] = []
    for i, raw in enumerate(_read_entries(path)):
        label = raw.get("name", "?") if isinstance(raw, Mapping) else "?"
        try:
            entry = LLMEntry.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "entry"
                problems.append(f"entry {label!r} (#{i}): {field}: {err['msg']}")
            continue
        if entry.base_url is not None:  # the prices price the answers collected from it
            for price in ("usd_per_mtok_in", "usd_per_mtok_out"):
                if getattr(entry, price) is None:
                    problems.append(f"entry {label!r} (#{i}): {price}: Field required with a base_url")
        if entry.api_key_env and not environ.get(entry.api_key_env):
            problems.append(f"entry {label!r} (#{i}): api_key_env: variable {entry.api_key_env} is not set")
        entries.append(entry)
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if entry.name in seen:
            problems.append(f"entry {entry.name!r} (#{i}): name: duplicate name")
        seen.add(entry.name)
    if problems:
        raise CatalogError(str(path), problems)
    rows = [
        entry.model_dump()
        | {"base_url": str(entry.base_url) if entry.base_url else None, "model_id": entry.model_id or entry.name}
        for entry in entries
    ]
    if not rows:  # an empty catalog: every LLM is deactivated
        return pl.DataFrame(schema=_EMPTY_SCHEMA)
    return pl.DataFrame(rows, schema=_EMPTY_SCHEMA)


def sync_catalog(con: duckdb.DuckDBPyConnection, path: str | os.PathLike[str]) -> pl.DataFrame:
    """Validate the catalog, then upsert it and deactivate LLMs no longer listed, in one transaction.

    A bad catalog raises before anything is written. Returns the validated catalog.
    """
    catalog = load_catalog(path)
    sync_llms(con, catalog)
    return catalog


def add_to_catalog(
    path: str | os.PathLike[str], entry: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> pl.DataFrame:
    """Append ``entry`` to the catalog file at ``path`` (created if absent), validating the whole result first:
    a bad entry or a duplicate name raises :class:`CatalogError` and leaves the file as it was.

    ``base_url: None`` makes an import-only entry. A YAML catalog whose ``llms`` list is the last block keeps its
    text and comments (one line is appended);
    otherwise the document is rewritten. Returns the validated catalog.
    """
    path = Path(path)
    # None is "not given", except base_url: None is an import-only entry (written as null, so the catalog's
    # defaults do not give it an endpoint)
    entry = {k: v for k, v in entry.items() if v is not None or k == "base_url"}
    text = path.read_text() if path.exists() else "llms:\n"
    if path.suffix.lower() == ".csv":
        rows = pl.read_csv(path) if path.exists() else pl.DataFrame()
        new_text = pl.concat([rows, pl.DataFrame([entry])], how="diagonal_relaxed").write_csv()
    else:
        document = yaml.safe_load(text) or {}
        if not isinstance(document, Mapping) or not isinstance(document.get("llms") or [], list):
            raise CatalogError(str(path), ["top level: expected a mapping with a list under 'llms'"])
        block_list_last = list(document)[-1:] == ["llms"] and re.search(r"^llms:[ \t]*$", text, re.MULTILINE)
        if block_list_last:
            flow = yaml.safe_dump(dict(entry), default_flow_style=True, sort_keys=False).strip()
            new_text = text.rstrip("\n") + f"\n  - {flow}\n"
        else:
            document = {**document, "llms": [*(document.get("llms") or []), dict(entry)]}
            new_text = yaml.safe_dump(document, sort_keys=False)
    candidate = path.with_name(f".new-{path.name}")  # same suffix: read as the same format
    candidate.write_text(new_text)
    try:
        catalog = load_catalog(candidate, environ)
    except CatalogError as exc:
        candidate.unlink()
        raise CatalogError(str(path), exc.problems) from None
    candidate.replace(path)  # atomic: readers see the old file or the new one
    return catalog
