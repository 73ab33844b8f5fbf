"""Grade an LLM's response against a reference answer into a score in [0, 1].

Every grader has a ``name`` and a ``version`` that are stored with each grade, so a change of behaviour (a new
``version``) never silently mixes with old grades. Get one by name:

>>> grader = get_grader("mmlu_pro_letter")
>>> grader.grade("... so the answer is (C).", "C")
1.0
>>> get_grader("numeric").grade_many(["It costs $1,250.50", "about 3/4"], ["1250.5", "0.7"])
array([1., 0.])
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "CHOICE_RULES",
    "ExactMatchGrader",
    "Grader",
    "MMLUProLetterGrader",
    "NumericGrader",
    "extract_choice",
    "extract_number",
    "get_grader",
    "grader_names",
    "normalize_text",
    "trace_choice",
]

CHOICE_LETTERS = "ABCDEFGHIJ"


class Grader(ABC):
    """Scores one response against one reference; ``grade_many`` does a batch into a float64 array."""

    #: Registry name, e.g. ``"mmlu_pro_letter"``.
    name: str
    #: Bumped whenever the same (response, reference) could get a different score.
    version: str

    @abstractmethod
    def _score(self, response: str, reference: str) -> float:
        """Score of an already-validated pair."""

    def _check_reference(self, reference: str, field: str) -> None:
        """Raise ``ValueError`` naming ``field`` when ``reference`` cannot be graded against (default: any str)."""
        return None

    def grade(self, response: str, reference: str) -> float:
        """Score in [0, 1] of ``response`` against ``reference``."""
        _check_str(response, "response")
        _check_str(reference, "reference")
        self._check_reference(reference, "reference")
        return self._score(response, reference)

    def grade_many(self, responses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """Scores of ``responses[i]`` against ``references[i]``, as a float64 array."""
        _check_sequence(responses, "responses")
        _check_sequence(references, "references")
        if len(responses) != len(references):
            raise ValueError(
                f"responses, references: lengths differ ({len(responses)} responses, {len(references)} references)"
            )
        scores = np.empty(len(responses), dtype=np.float64)
        for i, (response, reference) in enumerate(zip(responses, references, strict=True)):
            _check_str(response, f"responses[{i}]")
            _check_str(reference, f"references[{i}]")
            self._check_reference(reference, f"references[{i}]")
            scores[i] = self._score(response, reference)
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"


def _check_str(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a str, got {type(value).__name__} {value!r:.80}")


def _check_sequence(value: object, field: str) -> None:
    # A str is a Sequence[str] too; taking one for a batch of one-character answers is always a bug.
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{field}: expected a sequence of str, got {type(value).__name__} {value!r:.80}")


# ---- mmlu_pro_letter: MMLU-Pro's own answer extraction ----

# The chain of TIGER-AI-Lab/MMLU-Pro (compute_accuracy.py / evaluate_from_api.py): case-sensitive, first match.
_ANSWER_IS = re.compile(r"answer is \(?([A-J])\)?")
# MMLU-Pro's second step is ``re.search(r".*[aA]nswer:\s*([A-J])", text)``: without DOTALL ``.*`` stays on one
# line, so the first line holding an "answer: X" wins, and within it (greedy ``.*``) the last one. That pattern
# backtracks quadratically on long lines; this look-ahead finds every candidate once (overlapping ones too) and
# ``_answer_colon`` applies the same first-line, last-in-line rule.
_ANSWER_COLON = re.compile(r"(?=[aA]nswer:\s*([A-J]))")
# MMLU-Pro's last step is ``\b[A-J]\b(?!.*\b[A-J]\b)`` with DOTALL: the last standalone letter. Standalone
# one-letter matches never overlap, so the last ``finditer`` match is the same letter without the quadratic
# look-ahead.
_STANDALONE_LETTER = re.compile(r"\b[A-J]\b")


def _answer_colon(response: str) -> str | None:
    chosen, line_end = None, -1
    for match in _ANSWER_COLON.finditer(response):
        if chosen is None:
            line_end = response.find("\n", match.start())
            line_end = len(response) if line_end < 0 else line_end
        elif match.start() >= line_end:
            break
        chosen = match
    return chosen.group(1) if chosen else None


def _last_standalone_letter(response: str) -> str | None:
    last = None
    for last in _STANDALONE_LETTER.finditer(response):  # noqa: B007 -- only the last match is wanted
        pass
    return last.group(0) if last else None


#: Which step of MMLU-Pro's chain gave the letter (``trace_choice``), in the order they are tried.
CHOICE_RULES = ("answer is", "Answer:", "last letter", "none")


def trace_choice(response: str) -> tuple[str | None, str]:
    """The letter ``extract_choice`` gives and the rule of ``CHOICE_RULES`` that gave it.

    >>> trace_choice("Answer: (E)?  Then answer: F")  # the "Answer:" rule takes no parenthesis
    ('F', 'Answer:')
    >>> trace_choice("Between (E) and (F), I pick E.")
    ('E', 'last letter')
    """
    _check_str(response, "response")
    match = _ANSWER_IS.search(response)
    if match:
        return match.group(1), CHOICE_RULES[0]
    letter = _answer_colon(response)
    if letter:
        return letter, CHOICE_RULES[1]
    letter = _last_standalone_letter(response)
    return (letter, CHOICE_RULES[2]) if letter else (None, CHOICE_RULES[3])


def extract_choice(response: str) -> str | None:
    """The letter A-J that MMLU-Pro's evaluation extracts from ``response``, or None.

    In order: the first ``answer is (X)`` / ``answer is X``; else ``Answer: X`` (either case of "answer"; the
    first line that has one, its last); else the last standalone capital letter A-J anywhere. Lower-case
    letters are never choices.

    >>> extract_choice("The answer is (B). Also A.")
    'B'
    >>> extract_choice("Answer: D\\nso maybe C")
    'D'
    >>> extract_choice("the answer is (b), I think C")
    'C'
    >>> extract_choice("no letter here") is None
    True
    """
    return trace_choice(response)[0]


class MMLUProLetterGrader(Grader):
    """1.0 when the letter MMLU-Pro's evaluation extracts equals the reference letter, else 0.0.

    A response with no extractable letter scores 0.0 (MMLU-Pro itself would guess a random letter).
    """

    name = "mmlu_pro_letter"
    version = "1"

    def _check_reference(self, reference: str, field: str) -> None:
        if len(reference) != 1 or reference not in CHOICE_LETTERS:
            raise ValueError(f"{field}: expected one letter of {CHOICE_LETTERS}, got {reference!r}")

    def _score(self, response: str, reference: str) -> float:
        return 1.0 if extract_choice(response) == reference else 0.0


# ---- exact_match ----

_WHITESPACE = re.compile(r"\s+")
# Sentence-ending punctuation only: stripping brackets or symbols would equate "C++" with "C".
_TRAILING_PUNCTUATION = ".,;:!?\u2026\u3002"


def normalize_text(text: str) -> str:
    """Strip, casefold, collapse whitespace runs to one space, drop trailing ``.,;:!?`` (and "…", "。").

    >>> normalize_text("  The  Eiffel\\tTower !! ")
    'the eiffel tower'
    """
    _check_str(text, "text")
    collapsed = _WHITESPACE.sub(" ", text.strip().casefold())
    return collapsed.rstrip(_TRAILING_PUNCTUATION + " ")


class ExactMatchGrader(Grader):
    """1.0 when the normalised response equals the normalised reference (see ``normalize_text``)."""

    name = "exact_match"
    version = "1"

    def _score(self, response: str, reference: str) -> float:
        return 1.0 if normalize_text(response) == normalize_text(reference) else 0.0


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
    _check_str(text, "text")
    for match in reversed(list(_NUMBER.finditer(text))):
        value = _number_value(match)
        if value is not None:
            return value
    return None


class NumericGrader(Grader):
    """1.0 when the last number in the response equals the reference number within ``rel_tol``, else 0.0.

    The reference must be exactly one number in any format ``extract_number`` reads (``"$1,200"``, ``"3/4"``).
    A reference of 0 is only matched by 0: the tolerance is relative.
    """

    name = "numeric"
    _BASE_VERSION = "1"
    DEFAULT_REL_TOL = 1e-6

    def __init__(self, rel_tol: float = DEFAULT_REL_TOL) -> None:
        if isinstance(rel_tol, bool) or not isinstance(rel_tol, int | float) or not 0 <= rel_tol < math.inf:
            raise ValueError(f"rel_tol: expected a finite number >= 0, got {rel_tol!r}")
        self.rel_tol = float(rel_tol)

    @property
    def version(self) -> str:  # type: ignore[override]
        """A tolerance other than the default is part of the version: its grades are not comparable."""
        if self.rel_tol == self.DEFAULT_REL_TOL:
            return self._BASE_VERSION
        return f"{self._BASE_VERSION}+rel_tol={self.rel_tol!r}"

    def _reference_value(self, reference: str, field: str) -> float:
        stripped = reference.strip()
        match = _NUMBER.fullmatch(stripped)
        value = _number_value(match) if match else None
        if value is None:
            raise ValueError(f"{field}: expected one number, got {reference!r}")
        return value

    def _check_reference(self, reference: str, field: str) -> None:
        self._reference_value(reference, field)

    def _score(self, response: str, reference: str) -> float:
        predicted = extract_number(response)
        if predicted is None:
            return 0.0
        expected = self._reference_value(reference, "reference")
        return 1.0 if math.isclose(predicted, expected, rel_tol=self.rel_tol, abs_tol=0.0) else 0.0


# ---- registry ----

_REGISTRY: dict[str, Callable[[], Grader]] = {
    MMLUProLetterGrader.name: MMLUProLetterGrader,
    ExactMatchGrader.name: ExactMatchGrader,
    NumericGrader.name: NumericGrader,
}


def grader_names() -> list[str]:
    """Names ``get_grader`` knows, sorted."""
    return sorted(_REGISTRY)


def get_grader(name: str) -> Grader:
    """A grader with its default settings; ``ValueError`` (naming the known graders) for an unknown ``name``.

    >>> get_grader("exact_match").version
    '1'
    """
    factory = _REGISTRY.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"name: unknown grader {name!r}; known graders: {', '.join(grader_names())}")
    return factory()
