"""Multiple-choice graders: MMLU-Pro's own letter extraction, and the same chain for any set of letters."""

from __future__ import annotations

import re
import string
from typing import Any, ClassVar

from profiling.graders._base import Option, PairGrader, check_str, int_between, optional_str

__all__ = [
    "CHOICE_LETTERS",
    "CHOICE_RULES",
    "ChoiceExtractor",
    "MMLUProLetterGrader",
    "MultipleChoiceGrader",
    "extract_choice",
    "trace_choice",
]

CHOICE_LETTERS = "ABCDEFGHIJ"
#: Which step of MMLU-Pro's chain gave the letter (``trace_choice``), in the order they are tried.
CHOICE_RULES = ("answer is", "Answer:", "last letter", "none")


class ChoiceExtractor:
    """MMLU-Pro's extraction chain (TIGER-AI-Lab/MMLU-Pro, compute_accuracy.py) restricted to ``letters``.

    Case-sensitive: the first ``answer is (X)`` / ``answer is X``; else ``Answer: X`` (either case of
    "answer"; the first line that has one, its last); else the last standalone letter anywhere.
    """

    def __init__(self, letters: str) -> None:
        klass = "[" + re.escape(letters) + "]"
        self.letters = letters
        self._answer_is = re.compile(rf"answer is \(?({klass})\)?")
        # MMLU-Pro's second step is ``re.search(r".*[aA]nswer:\s*([A-J])", text)``: without DOTALL ``.*`` stays
        # on one line, so the first line holding an "answer: X" wins, and within it (greedy ``.*``) the last one.
        # That pattern backtracks quadratically on long lines; this look-ahead finds every candidate once
        # (overlapping ones too) and ``_answer_colon`` applies the same first-line, last-in-line rule.
        self._answer_colon = re.compile(rf"(?=[aA]nswer:\s*({klass}))")
        # MMLU-Pro's last step is ``\b[A-J]\b(?!.*\b[A-J]\b)`` with DOTALL: the last standalone letter.
        # Standalone one-letter matches never overlap, so the last ``finditer`` match is the same letter.
        self._standalone = re.compile(rf"\b{klass}\b")

    def _colon(self, response: str) -> str | None:
        chosen, line_end = None, -1
        for match in self._answer_colon.finditer(response):
            if chosen is None:
                line_end = response.find("\n", match.start())
                line_end = len(response) if line_end < 0 else line_end
            elif match.start() >= line_end:
                break
            chosen = match
        return chosen.group(1) if chosen else None

    def _last_letter(self, response: str) -> str | None:
        last = None
        for last in self._standalone.finditer(response):  # noqa: B007 -- only the last match is wanted
            pass
        return last.group(0) if last else None

    def trace(self, response: str) -> tuple[str | None, str]:
        """The letter and the rule of ``CHOICE_RULES`` that gave it."""
        match = self._answer_is.search(response)
        if match:
            return match.group(1), CHOICE_RULES[0]
        letter = self._colon(response)
        if letter:
            return letter, CHOICE_RULES[1]
        letter = self._last_letter(response)
        return (letter, CHOICE_RULES[2]) if letter else (None, CHOICE_RULES[3])


_MMLU_PRO = ChoiceExtractor(CHOICE_LETTERS)


def trace_choice(response: str) -> tuple[str | None, str]:
    """The letter ``extract_choice`` gives and the rule of ``CHOICE_RULES`` that gave it.

    >>> trace_choice("Answer: (E)?  Then answer: F")  # the "Answer:" rule takes no parenthesis
    ('F', 'Answer:')
    >>> trace_choice("Between (E) and (F), I pick E.")
    ('E', 'last letter')
    """
    check_str(response, "response")
    return _MMLU_PRO.trace(response)


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


class MMLUProLetterGrader(PairGrader):
    """1.0 when the letter MMLU-Pro's evaluation extracts equals the reference letter, else 0.0.

    A response with no extractable letter scores 0.0 (MMLU-Pro itself would guess a random letter).
    """

    name = "mmlu_pro_letter"
    base_version = "1"
    description = "MMLU-Pro's letter extraction (A-J): 1 when the extracted letter is the reference"

    def check_reference(self, reference: object, field: str) -> None:
        check_str(reference, field)
        if len(reference) != 1 or reference not in CHOICE_LETTERS:  # type: ignore[arg-type]
            raise ValueError(f"{field}: expected one letter of {CHOICE_LETTERS}, got {reference!r}")

    def _score(self, response: str, reference: str) -> float:
        return 1.0 if extract_choice(response) == reference else 0.0


def _letters(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or any(c not in string.ascii_uppercase for c in value)
        or len(set(value)) != len(value)
    ):
        raise ValueError(f"{field}: expected distinct capital letters A-Z, e.g. 'ABCDE', got {value!r}")
    return value


def _one_group_pattern(value: Any, field: str) -> str | None:
    if optional_str(value, field) is None:
        return None
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"{field}: not a regular expression ({exc}), got {value!r}") from exc
    if compiled.groups != 1:
        raise ValueError(f"{field}: expected a regular expression with one group, got {compiled.groups} in {value!r}")
    return value


class MultipleChoiceGrader(PairGrader):
    """1.0 when the letter extracted from the response is the reference letter, for any set of choices.

    Options: ``n_options`` (the letters are the first n of the alphabet, default 4: ABCD) or an explicit
    ``letters`` ("ABCDE"); ``pattern``, a regular expression with one group whose last match holding a valid
    letter is the choice (default: MMLU-Pro's chain, see ``ChoiceExtractor``, restricted to the letters).

    >>> MultipleChoiceGrader(n_options=5).grade("I'd say E", "E")
    1.0
    >>> MultipleChoiceGrader(pattern=r"<(.)>").grade("<B> not <X>", "B")
    1.0
    """

    name = "multiple_choice"
    base_version = "1"
    description = "multiple choice, any number of letters: the extracted letter must be the reference"
    DEFAULT_N_OPTIONS = 4
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("n_options", DEFAULT_N_OPTIONS, "number of choices; the letters are A, B, ...", int_between(2, 26)),
        Option("letters", None, "the valid letters, e.g. 'ABCDE' (instead of n_options)", _letters),
        Option(
            "pattern",
            None,
            "regex with one group; its last match with a valid letter is the choice",
            _one_group_pattern,
        ),
    )

    def _check_options(self) -> None:
        letters, n_options = self.options["letters"], self.options["n_options"]
        if letters is not None and n_options != self.DEFAULT_N_OPTIONS and len(letters) != n_options:
            raise ValueError(f"options.letters: {letters!r} does not have n_options={n_options} letters")
        self.valid_letters: str = self.options["letters"] or string.ascii_uppercase[: self.options["n_options"]]
        self._extractor = ChoiceExtractor(self.valid_letters)
        self._pattern = re.compile(self.options["pattern"]) if self.options["pattern"] else None

    def _version_parts(self) -> list[str]:
        # The same letters given either way are the same grader.
        parts = [] if self.valid_letters == "ABCD" else [f"letters={self.valid_letters!r}"]
        return parts + ([f"pattern={self.options['pattern']!r}"] if self._pattern else [])

    def check_reference(self, reference: object, field: str) -> None:
        check_str(reference, field)
        if len(reference) != 1 or reference not in self.valid_letters:  # type: ignore[arg-type]
            raise ValueError(f"{field}: expected one letter of {self.valid_letters}, got {reference!r}")

    def extract(self, response: str) -> str | None:
        """The chosen letter, or None."""
        if self._pattern is None:
            return self._extractor.trace(response)[0]
        chosen = None
        for match in self._pattern.finditer(response):
            letter = (match.group(1) or "").strip()
            if len(letter) == 1 and letter in self.valid_letters:
                chosen = letter
        return chosen

    def _score(self, response: str, reference: str) -> float:
        return 1.0 if self.extract(response) == reference else 0.0
