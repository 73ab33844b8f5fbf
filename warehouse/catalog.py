"""The LLM catalog: a user-edited ``llms.yaml`` (or CSV), validated before anything reaches the database.

YAML layout (``defaults`` apply to every entry; an entry's own keys win)::

    defaults:
      base_url: http://127.0.0.1:8765/v1
      max_concurrency: 32
    llms:
      - name: gemini-1.5-flash-002
        usd_per_mtok_in: 0.19
        usd_per_mtok_out: 0.19
      - name: my-gpt
        base_url: https://api.openai.com/v1
        model_id: gpt-4o-mini
        api_key_env: UNIROUTE_KEY_OPENAI  # the NAME of the variable holding the key, never the key
        usd_per_mtok_in: 0.15
        usd_per_mtok_out: 0.60
        timeout_first_byte_s: 30          # optional gateway timeouts; the gateway's defaults otherwise

CSV: one row per LLM with the same column names. ``model_id`` defaults to ``name``.

A price is per million tokens (``usd_per_mtok_in`` and ``usd_per_mtok_out``, given together) or per query
(``usd_per_query``), or both. An answer's cost is its measured USD, else its tokens x the per-token prices, else
the price per query. An entry with a ``base_url`` needs a price in one form: it prices the answers collected
from it. An LLM that exists only as imported results (``uniroute import-results``) needs no endpoint: leave out
``base_url`` (nothing will ever ask it anything) and, where the results carry per-query USD costs, its prices.

The file decides where keys are sent, so it is held to these rules:

- **Safe names.** ``name`` follows the one rule for LLM names (:mod:`warehouse.names`: letters, digits and
  ``. _ - : @ +``, no path separator, ``..``, whitespace or control character, not ``uniroute``): a name becomes
  a Dagster partition, a staging directory and a word in logs. ``model_id`` (the endpoint's name) is free.

- **Keys only from allowed variables.** ``api_key_env`` must start with ``UNIROUTE_KEY_`` or be listed in the
  environment variable ``UNIROUTE_ALLOWED_KEY_VARS`` (comma-separated names). ``UNIROUTE_ALLOWED_KEY_PREFIX``
  replaces the prefix (set but empty: no prefix is accepted, only the listed names); ``load_catalog``'s
  ``key_env_prefix`` and ``key_env_allow`` replace both. So an entry cannot have, say, ``DAGSTER_PG_PASSWORD``
  sent as a bearer token to a host of its choosing. Neither setting starts with the default prefix, so neither
  can be named as a key. :class:`KeyEnvPolicy` is the rule, for code that reads keys at call time.
- **No credentials in URLs.** A ``base_url`` with ``user[:password]@``, a query string or a fragment is refused
  (keys come from ``api_key_env``; and ``/chat/completions`` is appended to the URL, which a query string or a
  fragment would swallow).
- **https for keys.** An entry with ``api_key_env`` needs an ``https`` ``base_url`` unless its host is loopback
  (``localhost``, 127.0.0.0/8, ``::1``).
- **Bounded, finite numbers.** Prices 0 to 10,000 USD per million tokens or 0 to 1,000 USD per query;
  ``max_concurrency`` 1 to 4,096; ``requests_per_minute`` 1 to 1,000,000; the optional timeouts in seconds
  (null: the gateway's defaults), above 0 and at most 60 (``timeout_connect_s``), 600 (``timeout_first_byte_s``)
  and 3,600 (``timeout_total_s``), and of those given, connect <= first byte <= total. Infinity and NaN are
  refused.

Every problem names the entry, the field and the value; a value that could be a secret is masked: a URL's
credentials, query and fragment, the value of an unknown field, an ``api_key_env`` not shaped like a variable
name (upper case words joined by ``_``).
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from warehouse.db import Opener, opened
from warehouse.llms_and_prompts import sync_llms
from warehouse.names import llm_name_problem
from warehouse.userfiles import UserFileError, check_size, load_user_yaml, read_user_text

__all__ = [
    "CatalogError",
    "KeyEnvPolicy",
    "LLMEntry",
    "add_to_catalog",
    "edit_catalog",
    "load_catalog",
    "sync_catalog",
]

DEFAULT_KEY_ENV_PREFIX = "UNIROUTE_KEY_"
KEY_ENV_PREFIX_VARIABLE = "UNIROUTE_ALLOWED_KEY_PREFIX"
KEY_ENV_ALLOW_VARIABLE = "UNIROUTE_ALLOWED_KEY_VARS"
MAX_USD_PER_MTOK = 10_000.0
MAX_USD_PER_QUERY = 1_000.0
MAX_CONCURRENCY = 4096
MAX_REQUESTS_PER_MINUTE = 1_000_000
#: Upper bounds, in seconds, in the order each must not exceed the next (a try's first byte includes its connect).
TIMEOUT_LIMITS_S = {"timeout_connect_s": 60.0, "timeout_first_byte_s": 600.0, "timeout_total_s": 3600.0}


#: Characters a :class:`CatalogError`'s message takes at most, however many problems (all are in ``problems``).
MESSAGE_CHARS = 270


class CatalogError(ValueError):
    """The catalog is invalid; ``problems`` lists each one as 'entry <name> (#i): <field>: <message>'. The message
    lists as many as fit in :data:`MESSAGE_CHARS` characters (the first at least, cut short) and how many more."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        head = f"invalid LLM catalog {source}:"
        room = MESSAGE_CHARS - len(head) - len(" ... and 9999 more")
        shown: list[str] = []
        for problem in problems:
            if shown and len(problem) + 2 > room:
                break
            shown.append(_cut(problem, max(room, 60)))
            room -= len(shown[-1]) + 2
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        super().__init__(head + "\n  " + "\n  ".join(shown))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class KeyEnvPolicy:
    """Which environment variables an entry may name as ``api_key_env``: those starting with ``prefix`` (none
    when it is empty) and those in ``allow``."""

    prefix: str = DEFAULT_KEY_ENV_PREFIX
    allow: frozenset[str] = frozenset()

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, prefix: str | None = None, allow: Iterable[str] | None = None
    ) -> KeyEnvPolicy:
        """The policy set by ``UNIROUTE_ALLOWED_KEY_PREFIX`` / ``UNIROUTE_ALLOWED_KEY_VARS`` in ``environ``
        (default ``os.environ``); ``prefix`` and ``allow``, when given, replace them."""
        environ = os.environ if environ is None else environ
        if prefix is None:
            prefix = environ.get(KEY_ENV_PREFIX_VARIABLE, DEFAULT_KEY_ENV_PREFIX)
        if allow is None:
            allow = environ.get(KEY_ENV_ALLOW_VARIABLE, "").split(",")
        return cls(prefix.strip(), frozenset(name.strip() for name in allow if name.strip()))

    def allows(self, name: str) -> bool:
        """Whether the key may be read from the variable ``name``."""
        return name in self.allow or (bool(self.prefix) and name.startswith(self.prefix) and name != self.prefix)

    def rule(self) -> str:
        """The rule in words, for an error message."""
        listed = f"be listed in {KEY_ENV_ALLOW_VARIABLE}"
        if not self.prefix:
            return f"it must {listed} ({KEY_ENV_PREFIX_VARIABLE} is empty: no prefix is accepted)"
        return f"it must start with {self.prefix} or {listed}"


def _llm_name(name: str) -> str:
    """The LLM-name rule (``warehouse.names``) as a field validator: its reason is the problem's message."""
    if (problem := llm_name_problem(name)) is not None:
        raise PydanticCustomError("llm_name", "not a valid LLM name: {problem}", {"problem": problem})
    return name


def _seconds(field: str) -> Any:
    return Field(default=None, gt=0, le=TIMEOUT_LIMITS_S[field], allow_inf_nan=False)


class LLMEntry(BaseModel):
    """One LLM behind an OpenAI-compatible endpoint."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Annotated[str, AfterValidator(_llm_name)]
    base_url: AnyHttpUrl | None = None  # None: import-only (results, no endpoint)
    model_id: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # allow_inf_nan=False: NonNegativeFloat took inf (and 1e400, which is inf)
    usd_per_mtok_in: float | None = Field(default=None, ge=0, le=MAX_USD_PER_MTOK, allow_inf_nan=False)
    usd_per_mtok_out: float | None = Field(default=None, ge=0, le=MAX_USD_PER_MTOK, allow_inf_nan=False)
    usd_per_query: float | None = Field(default=None, ge=0, le=MAX_USD_PER_QUERY, allow_inf_nan=False)
    max_concurrency: int = Field(default=16, gt=0, le=MAX_CONCURRENCY)
    requests_per_minute: int | None = Field(default=None, gt=0, le=MAX_REQUESTS_PER_MINUTE)
    # the gateway's per-LLM timeouts (serving.upstream.Timeouts.of reads these names); None: its defaults
    timeout_connect_s: float | None = _seconds("timeout_connect_s")
    timeout_first_byte_s: float | None = _seconds("timeout_first_byte_s")
    timeout_total_s: float | None = _seconds("timeout_total_s")
    active: bool = True


_EMPTY_SCHEMA = {
    **dict.fromkeys(("name", "base_url", "model_id", "api_key_env"), pl.String),
    **dict.fromkeys(("usd_per_mtok_in", "usd_per_mtok_out", "usd_per_query"), pl.Float64),
    **dict.fromkeys(("max_concurrency", "requests_per_minute"), pl.Int64),
    **dict.fromkeys(TIMEOUT_LIMITS_S, pl.Float64),
    "active": pl.Boolean,
}


def _read_entries(path: Path) -> list[Mapping[str, Any]]:
    try:
        if path.suffix.lower() == ".csv":
            rows = pl.read_csv(check_size(path)).iter_rows(named=True)
            return [{k: v for k, v in row.items() if v is not None} for row in rows]
        document = load_user_yaml(path) or {}
    except UserFileError as exc:
        raise CatalogError(str(path), [exc.problem]) from None
    if not isinstance(document, Mapping) or "llms" not in document or not isinstance(document["llms"] or [], list):
        raise CatalogError(str(path), ["top level: expected a mapping with a list under 'llms'"])
    defaults = document.get("defaults") or {}
    entries = document["llms"] or []  # "llms:" with nothing under it: an empty catalog
    return [{**defaults, **entry} if isinstance(entry, Mapping) else entry for entry in entries]


# ---- showing values without showing secrets ----------------------------------------------------------------
# A key pasted where a variable's name belongs rarely looks like OPENAI_API_KEY: upper case words joined by "_".
_VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+_?")


def _hidden(value: object) -> str:
    size = f" of {len(value)} characters" if isinstance(value, str) else ""
    return f"<hidden {type(value).__name__}{size}>"


def _shown_key_env(value: object) -> str:
    if isinstance(value, str) and len(value) <= 64 and _VARIABLE_NAME.fullmatch(value):
        return value
    return _hidden(value)


def _masked_url(value: object) -> str:
    """The URL with its user info, query values and fragment replaced by ``***``."""
    if not isinstance(value, str):
        return _hidden(value)
    try:
        parts = urlsplit(value)
    except ValueError:
        return _hidden(value)
    userinfo, _, host = parts.netloc.rpartition("@")
    query = "&".join(f"{item.partition('=')[0]}=***" for item in parts.query.split("&")) if parts.query else ""
    masked = urlunsplit(
        (parts.scheme, ("***@" if userinfo else "") + host, parts.path, query, "***" if parts.fragment else "")
    )
    return repr(masked) if "@" not in masked.replace("***@", "", 1) else _hidden(value)  # "@" left: misparsed


#: Field names that announce a secret, and the prefixes of common API keys and tokens.
_SECRET_FIELD = re.compile(r"key|token|secret|passw|auth|credential|bearer|cookie|session", re.IGNORECASE)
_SECRET_PREFIX = re.compile(r"^(sk-|sk_|pk_|rk_|ghp_|gho_|ghs_|github_pat_|xox.-|AKIA|ASIA|hf_|AIza|eyJ|Bearer )")
#: A run of letters and digits this long, with both, looks random: a key or a token, not a name or a number.
_RANDOM_RUN = re.compile(r"(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{16,}")


def _looks_secret(field: str, value: object) -> bool:
    """Whether ``value`` under an unknown ``field`` could be a secret (a pasted key, a URL's credentials)."""
    if isinstance(value, bool | int | float) or value is None:
        return bool(_SECRET_FIELD.search(field)) and not isinstance(value, bool) and value is not None
    if not isinstance(value, str):
        return True  # a nested structure: shown by its type only
    return bool(
        _SECRET_FIELD.search(field) or _SECRET_PREFIX.match(value.strip()) or _RANDOM_RUN.search(value) or "@" in value
    )


def _shown(field: str, value: object) -> str:
    """``value`` as a problem shows it: names, numbers and known fields as they are (cut short), a URL masked, and
    whatever could be a secret hidden."""
    if field == "base_url":
        return _masked_url(value)
    if field == "api_key_env":
        return _shown_key_env(value)
    if field not in LLMEntry.model_fields and _looks_secret(field, value):
        return _hidden(value)  # e.g. "api_key: sk-...", or a key pasted into a column nobody knows
    return _cut(repr(value), 60)


# ---- the rules pydantic's field types do not express --------------------------------------------------------
def _is_loopback(host: str | None) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _entry_problems(entry: LLMEntry, policy: KeyEnvPolicy, environ: Mapping[str, str]) -> list[str]:
    """``<field>: <message>`` for each rule ``entry`` breaks beyond its fields' own types."""
    problems = []
    if (url := entry.base_url) is not None:
        shown = _masked_url(str(url))
        if url.username or url.password:
            problems.append(f"base_url: credentials in the URL are refused (name a variable in api_key_env): {shown}")
        if url.query or url.fragment:
            problems.append(f"base_url: a query string or fragment is refused (it may hold credentials): {shown}")
        if entry.api_key_env and url.scheme != "https" and not _is_loopback(url.host):
            problems.append(f"base_url: an entry with api_key_env needs https unless its host is loopback: {shown}")
        if entry.usd_per_mtok_in is None and entry.usd_per_mtok_out is None and entry.usd_per_query is None:
            problems.append(  # the prices price the answers collected from it
                "usd_per_mtok_in: Field required with a base_url (give usd_per_mtok_in and usd_per_mtok_out, "
                "or usd_per_query)"
            )
    pair = {"usd_per_mtok_in": entry.usd_per_mtok_in, "usd_per_mtok_out": entry.usd_per_mtok_out}
    for missing, given in (tuple(pair), tuple(reversed(pair))):
        if pair[missing] is None and pair[given] is not None:
            problems.append(f"{missing}: Field required with {given} (prices per million tokens come in pairs)")
    if entry.api_key_env:
        if not policy.allows(entry.api_key_env):
            shown_env = _shown_key_env(entry.api_key_env)
            problems.append(f"api_key_env: {shown_env} is not an allowed key variable: {policy.rule()}")
        elif not environ.get(entry.api_key_env):
            problems.append(f"api_key_env: variable {entry.api_key_env} is not set")
    given = [(field, value) for field in TIMEOUT_LIMITS_S if (value := getattr(entry, field)) is not None]
    for (field, value), (longer, longer_value) in pairwise(given):
        if value > longer_value:
            problems.append(f"{field}: {value!r} is more than {longer} ({longer_value!r})")
    return problems


def load_catalog(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    key_env_prefix: str | None = None,
    key_env_allow: Iterable[str] | None = None,
) -> pl.DataFrame:
    """Validate the catalog at ``path``; returns the frame ``warehouse.sync_llms`` takes (plus the timeouts).

    Every problem is collected and raised together in one :class:`CatalogError`: missing, negative, unbounded
    or non-finite numbers, duplicate names, malformed URLs or URLs with credentials, a key sent over plain
    http, unknown keys, and an ``api_key_env`` that is not allowed or whose variable is not set. ``environ``
    (default ``os.environ``) holds the keys and the key-variable settings, which ``key_env_prefix`` and
    ``key_env_allow`` replace (see the module's docstring).
    """
    path = Path(path)
    if not path.exists():
        raise CatalogError(str(path), ["file not found"])
    environ = os.environ if environ is None else environ
    policy = KeyEnvPolicy.from_environ(environ, key_env_prefix, key_env_allow)
    problems: list[str] = []
    entries: list[tuple[int, LLMEntry]] = []
    for i, raw in enumerate(_read_entries(path)):
        label = raw.get("name", "?") if isinstance(raw, Mapping) else "?"
        try:
            entry = LLMEntry.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "entry"
                got = "" if err["type"] == "missing" else f", got {_shown(field, err['input'])}"
                problems.append(f"entry {label!r} (#{i}): {field}: {err['msg']}{got}")
            continue
        problems += [f"entry {label!r} (#{i}): {problem}" for problem in _entry_problems(entry, policy, environ)]
        entries.append((i, entry))
    seen: set[str] = set()
    for i, entry in entries:
        if entry.name in seen:
            problems.append(f"entry {entry.name!r} (#{i}): name: duplicate name")
        seen.add(entry.name)
    if problems:
        raise CatalogError(str(path), problems)
    rows = [
        entry.model_dump()
        | {"base_url": str(entry.base_url) if entry.base_url else None, "model_id": entry.model_id or entry.name}
        for _, entry in entries
    ]
    if not rows:  # an empty catalog: every LLM is deactivated
        return pl.DataFrame(schema=_EMPTY_SCHEMA)
    return pl.DataFrame(rows, schema=_EMPTY_SCHEMA)


def sync_catalog(warehouse: Opener, path: str | os.PathLike[str]) -> pl.DataFrame:
    """Validate the catalog, then upsert it and deactivate LLMs no longer listed, in one transaction.

    ``warehouse`` is a connection or a function that opens one (e.g. ``lambda: connect(path)``), called only once
    the catalog is valid: a bad catalog raises before the warehouse is opened (or created), so it leaves no empty
    warehouse file behind. Returns the validated catalog.
    """
    catalog = load_catalog(path)
    with opened(warehouse) as con:
        sync_llms(con, catalog)
    return catalog


def add_to_catalog(
    path: str | os.PathLike[str], entry: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> pl.DataFrame:
    """Append ``entry`` to the catalog file at ``path`` (created if absent): :func:`edit_catalog` with one entry.

    ``base_url: None`` makes an import-only entry. Returns the validated catalog.
    """
    return edit_catalog(path, add=[entry], environ=environ)


def edit_catalog(
    path: str | os.PathLike[str],
    add: Iterable[Mapping[str, Any]] = (),
    update: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Append the entries ``add`` to the catalog file at ``path`` (created if absent) and set fields of the entries
    ``update`` names (``{name: {field: value}}``), validating the whole result first: a bad entry, a duplicate name
    or an entry to update that the file lacks raises :class:`CatalogError` and leaves the file as it was.

    A YAML file keeps its comments, its style (block with or without indented dashes, flow) and its indentation
    (a round-trip writer); a CSV file gains rows or columns. The file is replaced atomically. A ``None`` value is
    "not given", except ``base_url: None``: an import-only entry (written as null, so the catalog's defaults do not
    give it an endpoint). Returns the validated catalog.
    """
    path = Path(path)
    add = [{k: v for k, v in entry.items() if v is not None or k == "base_url"} for entry in add]
    update = {name: {k: v for k, v in fields.items() if v is not None} for name, fields in (update or {}).items()}
    edit = _edit_csv if path.suffix.lower() == ".csv" else _edit_yaml
    new_text = edit(path, add, update)
    candidate = path.with_name(f".new-{path.name}")  # same suffix: read as the same format
    candidate.write_text(new_text)
    try:
        catalog = load_catalog(candidate, environ)
    except CatalogError as exc:
        candidate.unlink()
        raise CatalogError(str(path), exc.problems) from None
    candidate.replace(path)  # atomic: readers see the old file or the new one
    return catalog


def _checked_size(path: Path) -> Path:
    try:
        return check_size(path)
    except UserFileError as exc:
        raise CatalogError(str(path), [exc.problem]) from None


def _checked_text(path: Path) -> str:
    """The text of a YAML catalog to edit, refused as :func:`load_catalog` refuses it (size, aliases)."""
    try:
        load_user_yaml(path)
        return read_user_text(path)
    except UserFileError as exc:
        raise CatalogError(str(path), [exc.problem]) from None


def _missing_entries(path: Path, names: Iterable[str], update: Mapping[str, Any]) -> None:
    """Raise naming the entries ``update`` names that the file's ``names`` lack."""
    if missing := sorted(set(update) - set(names)):
        raise CatalogError(str(path), [f"entry {name!r}: not in the file, so it cannot be updated" for name in missing])


def _edit_csv(path: Path, add: list[dict[str, Any]], update: Mapping[str, Mapping[str, Any]]) -> str:
    rows = pl.read_csv(_checked_size(path)).to_dicts() if path.exists() else []
    _missing_entries(path, (row.get("name") for row in rows), update)
    rows = [{**row, **update.get(row.get("name"), {})} for row in rows] + add
    return pl.DataFrame(rows, infer_schema_length=None).write_csv() if rows else "name\n"


def _edit_yaml(path: Path, add: list[dict[str, Any]], update: Mapping[str, Mapping[str, Any]]) -> str:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.util import load_yaml_guess_indent

    text = _checked_text(path) if path.exists() else ""
    writer = YAML()  # round trip: comments, flow or block style and quotes kept
    writer.preserve_quotes = True
    writer.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    try:
        _, indent, dash_offset = load_yaml_guess_indent(text) if text.strip() else (None, None, None)
        document = writer.load(text) if text.strip() else None
    except YAMLError as exc:
        raise CatalogError(str(path), [f"not valid YAML: {_cut(str(exc).splitlines()[0], 100)}"]) from None
    if indent:  # the file's own indentation: mappings, and dashes within their list
        dash_offset = dash_offset or 0
        writer.indent(mapping=max(indent - dash_offset, 2), sequence=indent, offset=dash_offset)
    document = CommentedMap() if document is None else document
    if not isinstance(document, Mapping) or not isinstance(document.get("llms") or [], list):
        raise CatalogError(str(path), ["top level: expected a mapping with a list under 'llms'"])
    if document.get("llms") is None:
        document["llms"] = CommentedSeq()
    entries = document["llms"]
    _missing_entries(path, (e.get("name") for e in entries if isinstance(e, Mapping)), update)
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("name") in update:
            entry.update(update[entry["name"]])
    for entry in add:
        new = CommentedMap(entry)
        if entries and isinstance(entries[-1], CommentedMap) and entries[-1].fa.flow_style():
            new.fa.set_flow_style()  # as the entries before it
        entries.append(new)
    out = io.StringIO()
    writer.dump(document, out)
    return out.getvalue()
