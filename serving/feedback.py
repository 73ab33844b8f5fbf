"""Feedback on the gateway's answers: ``POST /v1/feedback`` ratings, checked here and written off the request path.

A client rates a request by its id (the ``x-request-id`` header of the answer): ``{"request_id", "score"}`` with a
score in [0, 1], or ``{"request_id", "thumbs": "up" | "down"}`` (1.0 and 0.0), or a batch of either,
``{"feedback": [...]}`` (at most :data:`MAX_BATCH`; all or none are kept). Each rating is a new record (history is
kept; the latest of a request stands), written by a :class:`FeedbackLog` (:mod:`serving.recordlog`) to
``feedback-*.parquet`` files of :data:`SCHEMA`.

Who may rate what, without a lookup on the chat path: the id of every request that reaches an LLM carries a MAC of
(its random part, the client key's id) under a secret all workers of the gateway share (:class:`RequestIds`, a
file beside the key ledger, made once), so any worker tells the owner's rating from another key's by computing
MACs alone, whichever worker served the request and whether or not its decision is written yet. An id no MAC
explains (one from before the secret was replaced, or made up) is looked up in the decision files
(:class:`OwnerIndex`, read incrementally, off the event loop): another key's request is 403, an id nowhere 404.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import polars as pl

import warehouse as wh
from serving.chat_request import short_repr
from serving.decisions import SCHEMA as DECISION_SCHEMA
from serving.decisions import decision_files
from serving.recordlog import RecordLog, read_record_files, record_files

__all__ = [
    "MAX_BATCH",
    "SCHEMA",
    "SOURCE",
    "FeedbackError",
    "FeedbackLog",
    "OwnerIndex",
    "Ownership",
    "Rating",
    "RequestIds",
    "default_directory",
    "feedback_files",
    "feedback_record",
    "parse_feedback",
    "read_feedback",
    "read_feedback_files",
]

#: The columns of a feedback file (and of the warehouse's ``traffic_feedback``).
SCHEMA: dict[str, pl.DataType] = {
    "feedback_id": pl.String(),  # uuid4 hex, one per rating
    "request_id": pl.String(),  # the decision's
    "key_id": pl.String(),  # null when the gateway runs without keys
    "score": pl.Float64(),  # in [0, 1]; thumbs up 1.0, down 0.0
    "at": pl.Datetime("us", "UTC"),
    "source": pl.String(),  # "api" from the gateway; import-feedback writes "import:<file name>"
}
PREFIX = "feedback-"
SOURCE = "api"
#: Ratings in one batch at most.
MAX_BATCH = 100
THUMBS = {"up": 1.0, "down": 0.0}
_FIELDS = ("request_id", "score", "thumbs")
_MAX_ID_CHARS = 128
_RANDOM_HEX = 16  # the middleware's random part of a request id
_MAC_HEX = 16  # 64 bits of HMAC-SHA256
_SIGNED = re.compile(rf"[0-9a-f]{{{_RANDOM_HEX + _MAC_HEX}}}")


def default_directory() -> Path:
    """Where the gateway writes feedback files and the warehouse asset reads them: ``<warehouse dir>/feedback``."""
    return wh.default_path().parent / "feedback"


# ---- the request body --------------------------------------------------------------------------------------------
class FeedbackError(ValueError):
    """A bad feedback body; ``param`` names the field (OpenAI's ``error.param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Rating:
    """One checked rating; ``where`` is how errors name it (``""`` or ``"feedback[3]."``)."""

    request_id: str
    score: float
    where: str = ""


def parse_feedback(body: Mapping) -> list[Rating]:
    """The ratings of a ``POST /v1/feedback`` body (one, or a batch under ``feedback``); ``FeedbackError`` naming
    the first bad field and its value."""
    if "feedback" not in body:
        return [_rating(body, "")]
    unknown = [k for k in body if k != "feedback"]
    if unknown:
        raise FeedbackError(unknown[0], f"{unknown[0]}: unknown field beside feedback (a batch holds only feedback)")
    items = body["feedback"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        shown = f"a list of {len(items)}" if isinstance(items, list) else short_repr(items)
        raise FeedbackError("feedback", f"feedback={shown}: expected a list of 1 to {MAX_BATCH} ratings")
    return [_rating(item, f"feedback[{i}].") for i, item in enumerate(items)]


def _rating(item: object, where: str) -> Rating:
    if not isinstance(item, dict):
        raise FeedbackError(where.rstrip(".") or "body", f"{where.rstrip('.') or 'body'}: expected a JSON object")
    unknown = [k for k in item if k not in _FIELDS]
    if unknown:
        raise FeedbackError(f"{where}{unknown[0]}", f"{where}{unknown[0]}: unknown field; the fields are {_FIELDS}")
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= _MAX_ID_CHARS:
        raise FeedbackError(
            f"{where}request_id",
            f"{where}request_id={short_repr(request_id)}: expected a request's id (its x-request-id header)",
        )
    if ("score" in item) == ("thumbs" in item):
        raise FeedbackError(f"{where}score", f"{where}score, {where}thumbs: give one of them (a score or thumbs)")
    if "thumbs" in item:
        thumbs = item["thumbs"]
        if thumbs not in THUMBS:
            raise FeedbackError(f"{where}thumbs", f"{where}thumbs={short_repr(thumbs)}: expected 'up' or 'down'")
        return Rating(request_id, THUMBS[thumbs], where)
    score = item["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not (math.isfinite(score) and 0 <= score <= 1):
        raise FeedbackError(f"{where}score", f"{where}score={short_repr(score)}: expected a number in [0, 1]")
    return Rating(request_id, float(score), where)


def feedback_record(rating: Rating, key_id: str | None, source: str = SOURCE) -> dict:
    """The record of one rating (a new ``feedback_id``, now)."""
    return {
        "feedback_id": uuid.uuid4().hex,
        "request_id": rating.request_id,
        "key_id": key_id,
        "score": rating.score,
        "at": datetime.now(UTC),
        "source": source,
    }


# ---- who may rate a request -------------------------------------------------------------------------------------
class Ownership(Enum):
    """Whose request an id is, as far as the asking key may know: its own, another key's, or none known."""

    OWN = "own"
    OTHER = "other"
    UNKNOWN = "unknown"


class RequestIds:
    """Request ids that name their client key: ``<random part><MAC of (random part, key id)>``, 32 hex digits.

    The secret is a file (``0600``) made once by whichever worker comes first and read by the others, so every
    worker of a gateway, and the gateway after a restart, verifies the ids of all of them. Delete it to replace it:
    the ids made before are then answered from the decision files (:class:`OwnerIndex`).
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the request-id secret must hold at least 16 bytes")
        self._secret = secret

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RequestIds:
        """The secret at ``path``, made first if there is none (safe when several workers start at once)."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(32))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, path)  # whole, and only if no other worker's came first
            except FileExistsError:
                pass
            finally:
                temp.unlink()
        return cls(path.read_bytes())

    def _mac(self, random_part: str, key_id: str) -> str:
        message = f"{random_part}\x00{key_id}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:_MAC_HEX]

    def sign(self, random_part: str, key_id: str) -> str:
        """The id of a request of ``key_id`` whose middleware id is ``random_part``."""
        return f"{random_part}{self._mac(random_part, key_id)}"

    def made_for(self, request_id: str, key_id: str) -> bool:
        """Whether ``request_id`` is one this secret signed for ``key_id`` (constant time)."""
        if not _SIGNED.fullmatch(request_id):
            return False
        random_part, mac = request_id[:_RANDOM_HEX], request_id[_RANDOM_HEX:]
        return hmac.compare_digest(mac, self._mac(random_part, key_id))

    def ownership(self, request_id: str, key_id: str, other_key_ids: Iterable[str]) -> Ownership | None:
        """OWN or OTHER when a MAC explains ``request_id``; None when none does (ask :class:`OwnerIndex`)."""
        if self.made_for(request_id, key_id):
            return Ownership.OWN
        if any(self.made_for(request_id, other) for other in other_key_ids):
            return Ownership.OTHER
        return None


class OwnerIndex:
    """Who made each request, from the decision files in ``directory`` and its ``loaded/`` folder, read
    incrementally (a file once read is never read again: they are written whole and never change). Held as one
    two-column frame (some 40 bytes a request, not a dict's 200), searched whole: a few ms per million requests,
    on a path a client reaches only with an id no MAC explains, under its key's rate limit."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._seen: set[str] = set()
        self._owners = pl.DataFrame(schema={"request_id": pl.String(), "key_id": pl.Categorical()})
        self._lock = threading.Lock()

    def ownership(self, request_id: str, key_id: str) -> Ownership:
        """``key_id``'s own request, another key's, or none recorded (call it off the event loop: it reads files)."""
        with self._lock:
            owners = self._find(self._owners, request_id)
            if not owners:
                owners = self._find(self._refresh(), request_id)
        if not owners:
            return Ownership.UNKNOWN
        return Ownership.OWN if owners[0] == key_id else Ownership.OTHER

    @staticmethod
    def _find(frame: pl.DataFrame, request_id: str) -> list[str | None]:
        return frame.filter(pl.col("request_id") == request_id)["key_id"].cast(pl.String).to_list()

    def _refresh(self) -> pl.DataFrame:
        """Read the files not read yet; their rows (now in the index too)."""
        new = [f for f in decision_files(self.directory, loaded=True) if f.name not in self._seen]
        frame = read_record_files(new, DECISION_SCHEMA, ["request_id", "key_id"]).cast({"key_id": pl.Categorical()})
        self._owners = pl.concat([self._owners, frame], rechunk=False)
        self._seen.update(f.name for f in new)
        return frame


# ---- the files ---------------------------------------------------------------------------------------------------
def _normalise(record: Mapping) -> dict:
    row = {name: record.get(name) for name in SCHEMA}
    if not row["feedback_id"] or not row["request_id"]:
        raise ValueError("a feedback record needs a feedback_id and a request_id")
    score = row["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise ValueError(f"feedback {row['feedback_id']}: score={score!r} is not a number in [0, 1]")
    at = row["at"] or datetime.now(UTC)
    row["at"] = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    row["source"] = row["source"] or SOURCE
    return row


class FeedbackLog(RecordLog):
    """Feedback records (:func:`feedback_record`) written off the request path to ``feedback-*.parquet`` files of
    :data:`SCHEMA` in ``directory`` (default :func:`default_directory`; parameters as
    :class:`serving.recordlog.RecordLog`'s: ``metrics`` hears its queue and drops as ``log="feedback"``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, **options: object) -> None:
        super().__init__(directory or default_directory(), SCHEMA, PREFIX, _normalise, kind="feedback", **options)


def feedback_files(directory: str | os.PathLike[str] | None = None, *, loaded: bool = False) -> list[Path]:
    """The finished feedback files in ``directory`` (default :func:`default_directory`), sorted by name;
    ``loaded``: those moved to its ``loaded/`` folder too."""
    return record_files(directory or default_directory(), PREFIX, loaded=loaded)


def read_feedback_files(files: Iterable[Path]) -> pl.DataFrame:
    """Feedback files as one frame of :data:`SCHEMA`: every rating, history kept (one row per ``feedback_id``)."""
    return read_record_files(files, SCHEMA).unique(subset="feedback_id", keep="first", maintain_order=True)


def read_feedback(directory: str | os.PathLike[str] | None = None) -> pl.DataFrame:
    """Every finished feedback file in ``directory`` (default :func:`default_directory`) as one frame."""
    return read_feedback_files(feedback_files(directory))
