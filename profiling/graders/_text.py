"""Text graders: exact match after normalisation, numbers within a tolerance, a regular expression."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from profiling.graders._base import Option, PairGrader, boolean, check_str, non_negative_float, optional_str

__all__ = ["ExactMatchGrader", "NumericGrader", "RegexGrader", "extract_number", "normalize_text"]

# ---- exact_match ----

_WHITESPACE = re.compile(r"\s+")
# Sentence-ending punctuation only: stripping brackets or symbols would equate "C++" with "C".
_TRAILING_PUNCTUATION = ".,;:!?\u2026\u3002"


def normalize_text(text: str, case_sensitive: bool = False, strip_punctuation: bool = True) -> str:
    """Strip, casefold, collapse whitespace runs to one space, drop trailing ``.,;:!?`` (and "…", "。").

    >>> normalize_text("  The  Eiffel\\tTower !! ")
    'the eiffel tower'
    >>> normalize_text("  The  Eiffel\\tTower !! ", case_sensitive=True, strip_punctuation=False)
    'The Eiffel Tower !!'
    """
    check_str(text, "text")
    stripped = text.strip() if case_sensitive else text.strip().casefold()
    collapsed = _WHITESPACE.sub(" ", stripped)
    return collapsed.rstrip(_TRAILING_PUNCTUATION + " ") if strip_punctuation else collapsed


class ExactMatchGrader(PairGrader):
    """1.0 when the normalised response equals the normalised reference (see ``normalize_text``)."""

    name = "exact_match"
    base_version = "1"
    description = "normalised response == normalised reference (case, whitespace, trailing punctuation)"
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("case_sensitive", False, "compare case too (default: casefold both)", boolean),
        Option("strip_punctuation", True, "drop trailing sentence punctuation before comparing", boolean),
    )

    def _score(self, response: str, reference: str) -> float:
        options = self.options
        return 1.0 if normalize_text(response, **options) == normalize_text(reference, **options) else 0.0


# ---- numeric ----

_NUMBER = re.compile(
    r"""
    (?<![\w.])                                      # not the tail of a word or of another number
    (?P<sign>[-+\u2212]?)\$?(?P<sign_after_dollar>(?<=\$)[-+\u2212])?
    (?:
        (?P<integer>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)
        (?:
            /(?P<denominator>[0-9]+)                # a simple fraction: 3/4
          | (?P<decimals>\.[0-9]+)?(?P<exponent>[eE][-+]?[0-9]+)?
        )
      | (?P<bare_decimals>\.[0-9]+)(?P<bare_exponent>[eE][-+]?[0-9]+)?   # .5
    )
    """,
    re.VERBOSE,
)
_MINUS = "-\u2212"


def _number_value(match: re.Match[str]) -> float | None:
    signs = match["sign"] + (match["sign_after_dollar"] or "")
    negative = any(sign in _MINUS for sign in signs)
    if match["bare_decimals"] is not None:
        value = float(match["bare_decimals"] + (match["bare_exponent"] or ""))
    else:
        integer = match["integer"].replace(",", "")
        if match["denominator"] is not None:
            denominator = int(match["denominator"])
            if denominator == 0:
                return None
            value = float(integer) / denominator
        else:
            value = float(integer + (match["decimals"] or "") + (match["exponent"] or ""))
    return -value if negative else value


def extract_number(text: str) -> float | None:
    """The value of the last number in ``text``, or None.

    Handles signs (``-``, ``+``, U+2212 minus), decimals (``.5``, ``2.50``), exponents (``1e-6``), thousands separators
    (``1,234,567``), simple fractions (``3/4``) and a leading ``$`` (``-$5``, ``$-5``). A number glued to a word
    (``H2O``, ``x2``) is not a number; in ``3-4`` the last number is 4, not -4.

    >>> extract_number("from 1,000 to -$2,500.75, i.e. 3/4 of it")
    0.75
    >>> extract_number("none") is None
    True
    """
    check_str(text, "text")
    for match in reversed(list(_NUMBER.finditer(text))):
        value = _number_value(match)
        if value is not None:
            return value
    return None


def reference_number(reference: object, field: str) -> float:
    """The one number ``reference`` holds; ``ValueError`` naming ``field`` otherwise."""
    check_str(reference, field)
    match = _NUMBER.fullmatch(reference.strip())  # type: ignore[union-attr]
    value = _number_value(match) if match else None
    if value is None:
        raise ValueError(f"{field}: expected one number, got {reference!r}")
    return value


class NumericGrader(PairGrader):
    """1.0 when the last number in the response equals the reference number within the tolerances, else 0.0.

    ``math.isclose(predicted, expected, rel_tol=rel_tol, abs_tol=abs_tol)``. The reference must be exactly one
    number in any format ``extract_number`` reads (``"$1,200"``, ``"3/4"``). With the default ``abs_tol`` of 0,
    a reference of 0 is only matched by 0.
    """

    name = "numeric"
    base_version = "1"
    description = "the last number in the response equals the reference within rel_tol / abs_tol"
    DEFAULT_REL_TOL = 1e-6
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("rel_tol", DEFAULT_REL_TOL, "relative tolerance", non_negative_float),
        Option("abs_tol", 0.0, "absolute tolerance", non_negative_float),
    )

    def check_reference(self, reference: object, field: str) -> None:
        reference_number(reference, field)

    def _score(self, response: str, reference: str) -> float:
        predicted = extract_number(response)
        if predicted is None:
            return 0.0
        expected = reference_number(reference, "reference")
        return 1.0 if math.isclose(predicted, expected, rel_tol=self.rel_tol, abs_tol=self.abs_tol) else 0.0


# ---- regex ----


def _pattern(value: Any, field: str) -> str | None:
    if optional_str(value, field) is None:
        return None
    _compile(value, field)
    return value


def _compile(pattern: str, field: str, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"{field}: not a regular expression ({exc}), got {pattern!r:.80}") from exc


class RegexGrader(PairGrader):
    """1.0 when a regular expression matches anywhere in the response (``re.search``), else 0.0.

    The expression is the ``pattern`` option, or, with ``use_reference_as_pattern``, each prompt's reference.

    >>> RegexGrader(pattern=r"\\b(?:Paris|paris)\\b").grade("It is Paris.", None)
    1.0
    >>> RegexGrader(use_reference_as_pattern=True).grade("x = 42", r"x\\s*=\\s*42")
    1.0
    """

    name = "regex"
    base_version = "1"
    description = "1 when a regular expression (option pattern, or the reference) matches anywhere"
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("pattern", None, "the regular expression (re.search)", _pattern),
        Option("use_reference_as_pattern", False, "use each prompt's reference as the expression", boolean),
        Option("ignore_case", False, "match case-insensitively", boolean),
    )

    def _check_options(self) -> None:
        if (self.options["pattern"] is None) == (not self.options["use_reference_as_pattern"]):
            raise ValueError(
                f"options.pattern: give a pattern or use_reference_as_pattern=true (exactly one), "
                f"got pattern={self.options['pattern']!r}, "
                f"use_reference_as_pattern={self.options['use_reference_as_pattern']!r}"
            )
        self._flags = re.IGNORECASE if self.options["ignore_case"] else 0
        self._fixed = _compile(self.options["pattern"], "options.pattern", self._flags) if self.pattern else None

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self._fixed is None

    def check_reference(self, reference: object, field: str) -> None:
        super().check_reference(reference, field)
        if self._fixed is None:
            _compile(reference, field, self._flags)  # type: ignore[arg-type]

    def _score(self, response: str, reference: str | None) -> float:
        pattern = self._fixed or _compile(reference, "reference", self._flags)  # type: ignore[arg-type]
        return 1.0 if pattern.search(response) else 0.0
