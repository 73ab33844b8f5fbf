"""The one rule for an LLM's name, wherever a name enters: catalog entries, imported results, price files,
``uniroute add-model``, and the Dagster partitions made from them.

A name becomes a database key, a Dagster partition (a directory of Dagster's file storage), a staging directory
and a word in log lines and error messages, so it is held to a small, safe alphabet: 1 to
:data:`MAX_LLM_NAME_CHARS` ASCII letters, digits and ``. _ - : @ +``, starting with a letter or digit; no path
separator (``/`` or ``\\``), no ``..``, no whitespace or control character; and not a reserved name
(:data:`RESERVED_LLM_NAMES`, in any case: the gateway's routed model). An endpoint's own model name (a catalog
entry's ``model_id``, e.g. ``meta-llama/Llama-3-8B``) is not an LLM name and is not held to this rule.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "MAX_LLM_NAME_CHARS",
    "RESERVED_LLM_NAMES",
    "LLMNameError",
    "check_llm_name",
    "llm_name_problem",
    "shown_name",
]

MAX_LLM_NAME_CHARS = 128
#: Names an LLM may not take (compared case-insensitively): ``uniroute`` is the model name the gateway routes
#: (``serving.chat_request.ROUTED_MODEL``; a test keeps the two in step, since this floor cannot import serving).
RESERVED_LLM_NAMES = frozenset({"uniroute"})
ALLOWED = "A-Z a-z 0-9 . _ - : @ +"
_ALLOWED_CHAR = re.compile(r"[A-Za-z0-9._:@+-]")
_SHOWN_CHARS = 48


class LLMNameError(ValueError):
    """An LLM name that breaks the rule; the one-line message names the field and shows the value safely (repr,
    cut short, control characters escaped). ``field``, ``value`` and ``reason`` hold what it says."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}: {shown_name(value)} is not a valid LLM name: {reason}")


def shown_name(value: object) -> str:
    """``value`` for a one-line message: its repr (control and invisible characters escaped), cut short."""
    if isinstance(value, str):
        text = repr(value[:_SHOWN_CHARS])
        return text if len(value) <= _SHOWN_CHARS else f"{text[:-1]}...{text[-1]} ({len(value):,} characters)"
    return f"<{type(value).__name__}>"


def llm_name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid LLM name (short, for a message), or ``None`` when it is."""
    if not isinstance(name, str):
        return f"expected text, got {type(name).__name__}"
    if not name:
        return "empty"
    if len(name) > MAX_LLM_NAME_CHARS:
        return f"longer than {MAX_LLM_NAME_CHARS} characters"
    if name.casefold() in RESERVED_LLM_NAMES:
        return "reserved (the gateway's routed model)"
    if (bad := next((c for c in name if not _ALLOWED_CHAR.fullmatch(c)), None)) is not None:
        return f"has {_kind(bad)} {bad!r} (allowed: {ALLOWED})"
    if not name[0].isalnum():
        return "must start with a letter or a digit"
    if ".." in name:
        return "has '..'"
    return None


def _kind(char: str) -> str:
    if char in "/\\":
        return "a path separator"
    if unicodedata.category(char).startswith("C"):
        return "a control character"
    if char.isspace():
        return "whitespace"
    return "the character"


def check_llm_name(name: object, field: str = "name") -> str:
    """``name`` when it is a valid LLM name (see the module's docstring); else raise :class:`LLMNameError` naming
    ``field`` (e.g. ``"--model"``, ``"model"``, ``"name"``) and the value."""
    if (problem := llm_name_problem(name)) is not None:
        raise LLMNameError(field, name, problem)
    return name  # type: ignore[return-value]  # a str: llm_name_problem checked it
