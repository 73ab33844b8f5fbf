"""Who a client key is and what it may do (:class:`KeyPolicy`), the errors a refused request gets, and the keys
read from a keys file of hashed secrets or from ``$UNIROUTE_GATEWAY_KEYS`` (:mod:`serving.keys` keeps the store and
its counters)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serving.chat_request import BUDGETS, ROUTED_MODEL, short_repr
from warehouse.userfiles import MAX_USER_FILE_BYTES, UserFileError, check_size, parse_user_yaml

NO_ROUTING = f"!{ROUTED_MODEL}"  # in a key's models: the key may not use the routed model
ENV_VAR = "UNIROUTE_GATEWAY_KEYS"
ADMIN_ROLE = "admin"
ANONYMOUS_ID = "anonymous"
MIN_SECRET_CHARS = 16
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("id", "sha256", "models", "usd_per_day", "requests_per_minute", "role", "store", *BUDGETS, "candidates")


class ClientError(Exception):
    """A request refused for the client's own reason (4xx): status, message, OpenAI ``param``/``code``, headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


class AuthError(ClientError):
    """401 (no or unknown key) or 403 (a model the key may not use)."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="uniroute"'} if status == 401 else None
        super().__init__(status, message, code, param, headers)


class LimitError(ClientError):
    """429: a key over its rate or spend limit; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, code: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(429, message, code, None, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})


@dataclass(frozen=True)
class KeyPolicy:
    """What one key may do. ``key_id`` is public (logs, metrics); the secret is never part of a policy."""

    key_id: str
    models: frozenset[str] | None = None  # allowed LLMs (direct and as routing candidates); None: all
    usd_per_day: float | None = None
    requests_per_minute: float | None = None
    admin: bool = False  # may read the operator's pages (/metrics)
    store: bool = True  # False: none of the key's traffic is ever sampled (wins over the gateway's sample rate)
    # the tenant's routing policy: its default budget (kind, value), which also bounds what its requests ask, and
    # the LLMs it routes among (a request may narrow them, never widen them)
    budget: tuple[str, float] | None = None
    candidates: tuple[str, ...] | None = None

    def allows(self, model: str) -> bool:
        """Whether the key may ask for ``model``: a catalog LLM in its set, or the routed model unless excluded."""
        if self.models is None:
            return True
        if model == ROUTED_MODEL:
            return NO_ROUTING not in self.models
        return model in self.models

    def require_model(self, model: object) -> None:
        """Raise ``AuthError`` 403 when the request's ``model`` is not allowed for this key."""
        if not isinstance(model, str) or not self.allows(model):
            raise AuthError(
                403, f"model={short_repr(model)}: not allowed for key {self.key_id!r}", "model_not_allowed", "model"
            )

    def route_pool(self, pool: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
        """The candidates to route over: ``requested`` (each must be allowed) or the allowed part of ``pool``.

        Raises ``AuthError`` 403 naming the first requested candidate the key may not use, or when none of the
        pool is allowed.
        """
        if requested:
            for name in requested:
                if not isinstance(name, str) or not self.allows(name) or name == ROUTED_MODEL:
                    raise AuthError(
                        403,
                        f"candidates: {short_repr(name)} is not allowed for key {self.key_id!r}",
                        "model_not_allowed",
                        "candidates",
                    )
            return list(requested)
        allowed = [m for m in pool if self.allows(m)]
        if not allowed:
            raise AuthError(
                403, f"key {self.key_id!r}: none of the router's LLMs {list(pool)} is allowed", "model_not_allowed"
            )
        return allowed

    def own_candidates(self, candidates: Sequence[str], requested: bool) -> list[str]:
        """``candidates`` within the key's own candidate set (all of them for a key without one); ``ClientError``
        400 naming ``candidates`` when none is left (``requested``: the request named them)."""
        if self.candidates is None:
            return list(candidates)
        kept = [c for c in candidates if c in self.candidates]
        if not kept:
            what = f"candidates={short_repr(list(candidates))}" if requested else "the router's active LLMs"
            message = f"{what}: none is among key {self.key_id!r}'s candidates {list(self.candidates)}"
            raise ClientError(400, message, "invalid_value", "candidates")
        return kept


ANONYMOUS = KeyPolicy(ANONYMOUS_ID)


@dataclass(frozen=True)
class ClientKey:
    """A client key as read: its policy, the SHA-256 of its secret and where it was defined."""

    policy: KeyPolicy
    digest: bytes = field(repr=False)  # SHA-256 of the secret
    source: str = ""  # where it was defined, for errors


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of ``secret`` (UTF-8), as stored in a keys file."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def unique_keys(keys: Iterable[ClientKey]) -> tuple[ClientKey, ...]:
    """``keys`` as a tuple; ``ValueError`` for an id defined twice or a secret shared by two ids."""
    ids: dict[str, ClientKey] = {}
    digests: dict[bytes, ClientKey] = {}
    for key in keys:
        where = f"{key.source or 'key'} (id={key.policy.key_id!r})"
        if key.policy.key_id in ids:
            raise ValueError(f"{where}: defined twice (also {ids[key.policy.key_id].source})")
        if key.digest in digests:
            raise ValueError(f"{where}: the same secret as id={digests[key.digest].policy.key_id!r}")
        ids[key.policy.key_id] = digests[key.digest] = key
    return tuple(ids.values())


# ---- parsing ----
def parse_keys_file(path: str | os.PathLike[str], content: bytes | None = None) -> list[ClientKey]:
    """The keys of a YAML or JSON keys file (``content``: its bytes, already read); ``ValueError`` naming the file,
    entry, field and value."""
    path = Path(path)
    try:
        content = check_size(path).read_bytes() if content is None else content
        if len(content) > MAX_USER_FILE_BYTES:
            raise UserFileError(path, f"file of {len(content):,} bytes is above the limit of {MAX_USER_FILE_BYTES:,}")
        text = content.decode("utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else parse_user_yaml(text, path)
    except UserFileError as exc:
        raise ValueError(f"keys file {exc}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"keys file {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"]
    if not isinstance(data, list):
        raise ValueError(f"keys file {path}: expected a list of {{id, sha256, ...}} entries, got {type(data).__name__}")
    return [parse_entry(entry, f"keys file {path} entry {i}") for i, entry in enumerate(data)]


def parse_entry(entry: object, where: str) -> ClientKey:
    """One keys-file entry (``where`` names it in errors); ``ValueError`` naming the field and value."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with id and sha256, got {type(entry).__name__}")
    key_id = _parse_id(entry.get("id"), where)
    where = f"{where} (id={key_id!r})"
    unknown = [k for k in entry if k not in _FIELDS]
    if unknown:  # e.g. a pasted "secret": the value is not repeated here
        raise ValueError(
            f"{where}: unknown field {str(unknown[0])!r}; the fields are {list(_FIELDS)} "
            "(a keys file holds sha256 hashes, never secrets: python -m serving.keys hash)"
        )
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
        # not echoed: a secret pasted here by mistake must not reach the log
        raise ValueError(f"{where}: field sha256 must be 64 hex digits (python -m serving.keys hash makes it)")
    return ClientKey(
        KeyPolicy(
            key_id,
            _parse_models(entry.get("models"), where),
            _parse_number(entry.get("usd_per_day"), "usd_per_day", where, allow_zero=True),
            _parse_number(entry.get("requests_per_minute"), "requests_per_minute", where, allow_zero=False),
            _parse_role(entry.get("role"), where),
            _parse_store(entry.get("store", True), where),
            _parse_budget(entry, where),
            _parse_candidates(entry.get("candidates"), entry.get("models"), where),
        ),
        bytes.fromhex(digest),
        where.partition(" (id=")[0],
    )


def parse_env_keys(value: str) -> list[ClientKey]:
    """Keys from ``id:secret[:usd_per_day[:requests_per_minute]]`` pairs separated by commas."""
    keys = []
    for i, item in enumerate(part.strip() for part in value.split(",")):
        if not item:
            continue
        where = f"{ENV_VAR} entry {i}"
        parts = item.split(":")
        if len(parts) < 2 or len(parts) > 4:
            raise ValueError(f"{where}: expected id:secret or id:secret:usd_per_day:requests_per_minute")
        key_id = _parse_id(parts[0].strip(), where)
        where = f"{where} (id={key_id!r})"
        secret = parts[1].strip()
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"{where}: the secret is shorter than {MIN_SECRET_CHARS} characters")
        limits = [p.strip() or None for p in parts[2:]] + [None] * (4 - len(parts))
        keys.append(
            ClientKey(
                KeyPolicy(
                    key_id,
                    None,
                    _parse_number(limits[0], "usd_per_day", where, allow_zero=True),
                    _parse_number(limits[1], "requests_per_minute", where, allow_zero=False),
                ),
                hashlib.sha256(secret.encode("utf-8")).digest(),
                f"{ENV_VAR} entry {i}",
            )
        )
    return keys


def _parse_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{where}: field id={short_repr(value)}: expected 1-64 of A-Z a-z 0-9 _ . @ - (a public name)")
    if value == ANONYMOUS_ID:
        raise ValueError(f"{where}: field id={value!r} is reserved for requests without keys")
    return value


def _parse_role(value: object, where: str) -> bool:
    if value is None:
        return False
    if value != ADMIN_ROLE:
        raise ValueError(f"{where}: field role={short_repr(value)}: expected {ADMIN_ROLE!r} or no role")
    return True


def _parse_store(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: field store={short_repr(value)}: expected true or false")
    return value


def _parse_budget(entry: dict, where: str) -> tuple[str, float] | None:
    """The key's default budget: one of :data:`serving.chat_request.BUDGETS`, checked as a request's would be."""
    given = [name for name in BUDGETS if entry.get(name) is not None]
    if len(given) > 1:
        raise ValueError(f"{where}: fields {given[0]} and {given[1]}: give one of {', '.join(BUDGETS)}")
    if not given:
        return None
    name, value = given[0], entry[given[0]]
    ok, expected = BUDGETS[name]
    if not ok(value):
        raise ValueError(f"{where}: field {name}={short_repr(value)}: expected {expected}")
    return name, float(value)


def _parse_candidates(value: object, models: object, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = _parse_models(value, where, "candidates")
    if not names or len(names) != len(value):
        raise ValueError(f"{where}: field candidates={short_repr(value)}: expected LLM names, none twice")
    allowed = _parse_models(models, where)
    outside = sorted(names - allowed) if allowed is not None else []
    if outside:
        raise ValueError(f"{where}: field candidates: {outside[0]!r} is not in the key's models {sorted(allowed)}")
    return tuple(m.strip() for m in value)


def _parse_models(value: object, where: str, name: str = "models") -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) and m.strip() for m in value):
        raise ValueError(f"{where}: field {name}={short_repr(value)}: expected a list of model names")
    return frozenset(m.strip() for m in value)


def _parse_number(value: object, name: str, where: str, *, allow_zero: bool) -> float | None:
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise ValueError(f"{where}: field {name}={short_repr(value)}: expected a number")
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(
            f"{where}: field {name}={short_repr(value)}: expected a number {'>=' if allow_zero else '>'} 0"
        )
    return float(number)
