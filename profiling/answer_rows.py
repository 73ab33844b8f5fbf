"""Whether a collected answer row can be stored: characters UTF-8 cannot hold, and the warehouse's rules for
``responses`` checked before a row joins a batch (:mod:`profiling.collector`)."""

from __future__ import annotations

import math
import re

from openai_compat import MAX_TOKENS

#: What UTF-8 cannot hold in a str: lone surrogates (valid JSON escapes, e.g. half an emoji cut by a tokenizer).
_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(text: str) -> tuple[str, bool]:
    """``text`` as UTF-8 can hold it (each lone surrogate becomes U+FFFD), and whether it changed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text), True
    return text, False


def unstorable_field(row: dict) -> str | None:
    """The first field of an answer row the warehouse would refuse (its rules for ``responses``), else None."""
    for name in ("prompt_tokens", "completion_tokens"):
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKENS:
            return name
    for name, required in (("latency_ms", True), ("cost_usd", False)):
        value = row[name]
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
            return name
    for name, required in (("response", True), ("finish_reason", False), ("prompt_hash", True)):
        value = row[name]
        if value is None and not required:
            continue
        if not isinstance(value, str) or storable_text(value)[1]:
            return name
    return None
