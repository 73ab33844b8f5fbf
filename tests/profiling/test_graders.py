"""Graders: MMLU-Pro's letter extraction step by step, numeric formats, exact-match normalisation, bad input."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from profiling.graders import (
    CHOICE_RULES,
    ExactMatchGrader,
    Grader,
    MMLUProLetterGrader,
    NumericGrader,
    extract_choice,
    extract_number,
    get_grader,
    grader_names,
    normalize_text,
    trace_choice,
)

# ---- mmlu_pro_letter ----


@pytest.mark.parametrize(
    ("response", "letter", "rule"),
    [
        ("Thinking... the answer is (B).", "B", "answer is"),
        ("so the answer is C", "C", "answer is"),  # no parentheses
        ("the answer is (A). On reflection the answer is (D).", "A", "answer is"),  # first, not last
        ("Answer: C. Wait, the answer is (D).", "D", "answer is"),  # "answer is" outranks "Answer:"
        ("Final answer: G", "G", "Answer:"),  # lower-case "answer:" counts
        ("Answer:\n\n  H", "H", "Answer:"),  # the whitespace after the colon may span lines
        ("Answer: A, no, answer: B\nAnswer: C", "B", "Answer:"),  # first line that has one, its last
        ("Answer: Cannot be determined", "C", "Answer:"),  # MMLU-Pro's regex has no word boundary here
        ("Answer: (E)", "E", "last letter"),  # "Answer:" takes no parenthesis; (E) is a standalone letter
        ("Both (B) and (F) fit; I pick F", "F", "last letter"),
        ("C is better than B, I think", "I", "last letter"),  # "I" is a choice letter too
        ("Option\nB\nis\nright", "B", "last letter"),  # across lines
        ("the answer is (K)", None, "none"),  # only A-J are choices
        ("The answer is (K), else (A)", "A", "last letter"),
        ("the answer is (b)", None, "none"),  # lower case is never a choice
        ("The Answer Is (B)", "B", "last letter"),  # "answer is" is case-sensitive
        ("Because CABBAGE", None, "none"),  # capitals inside words are not letters
        ("", None, "none"),
    ],
)
def test_extraction_follows_mmlu_pros_chain(response, letter, rule):
    assert extract_choice(response) == letter
    assert trace_choice(response) == (letter, rule)
    assert rule in CHOICE_RULES


def _mmlu_pro_reference(text: str) -> str | None:
    """TIGER-AI-Lab/MMLU-Pro's extract_answer -> extract_again -> extract_final, literally."""
    match = re.search(r"answer is \(?([A-J])\)?", text)
    if match:
        return match.group(1)
    match = re.search(r".*[aA]nswer:\s*([A-J])", text)
    if match:
        return match.group(1)
    match = re.search(r"\b[A-J]\b(?!.*\b[A-J]\b)", text, re.DOTALL)
    return match.group(0) if match else None


def test_fast_extraction_equals_mmlu_pros_regexes_on_random_text():
    rng = random.Random(7)
    pieces = ["answer is ", "Answer:", "answer:", " ", "\n", "(", ")", "A", "B", "J", "K", "b", "x", "AB", ". ", "is"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    rules = {trace_choice(t)[1] for t in texts}
    assert rules == set(CHOICE_RULES)  # the sample reaches every step of the chain
    for text in texts:
        assert extract_choice(text) == _mmlu_pro_reference(text), repr(text)


def test_letter_grader_scores_and_validates_the_reference():
    grader = get_grader("mmlu_pro_letter")
    assert isinstance(grader, MMLUProLetterGrader) and grader.name == "mmlu_pro_letter" and grader.version
    assert grader.grade("the answer is (B)", "B") == 1.0
    assert grader.grade("the answer is B", "B") == 1.0  # "(B)" and "B" are the same choice
    assert grader.grade("the answer is (B)", "C") == 0.0
    assert grader.grade("no idea", "A") == 0.0  # nothing extracted: wrong, never a guess
    for bad in ("b", "K", "", "AB", " B"):
        with pytest.raises(ValueError, match=r"reference: expected one letter of ABCDEFGHIJ"):
            grader.grade("the answer is (B)", bad)


# ---- numeric ----


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The total is 42.", 42.0),
        ("x = -17", -17.0),
        ("+3 degrees", 3.0),
        ("\u22122.5", -2.5),  # Unicode minus
        ("about .5 of it", 0.5),
        ("1,234,567 people", 1234567.0),
        ("It costs $1,250.50 now", 1250.5),
        ("a loss of -$5", -5.0),
        ("a loss of $-5", -5.0),
        ("3/4 of the cake", 0.75),
        ("-3/4", -0.75),
        ("rate 1e-3 per s", 0.001),
        ("from 10 to 20, so 15", 15.0),  # the last number
        ("pages 3-4", 4.0),  # a range, not -4
        ("1, 2, 3", 3.0),  # a list, not one number with separators
        ("100%", 100.0),
        ("H2O", None),  # digits glued to a word are not a number
        ("no digits", None),
    ],
)
def test_extract_number_formats(text, value):
    assert extract_number(text) == value


def test_numeric_grader_tolerance_is_relative_and_configurable():
    grader = get_grader("numeric")
    assert grader.grade("so x = 1,000,000.5", "1000000") == 1.0  # 5e-7 relative
    assert grader.grade("so x = 1.01", "1") == 0.0
    assert grader.grade("0.0", "0") == 1.0
    assert grader.grade("1e-9", "0") == 0.0  # relative: zero only matches zero
    assert grader.grade("0.75", "3/4") == 1.0  # the reference may be any number format
    assert grader.grade("$1,200", "1200.0") == 1.0
    assert grader.grade("no number", "1") == 0.0
    loose = NumericGrader(rel_tol=0.05)
    assert loose.grade("so x = 1.01", "1") == 1.0
    assert loose.version != grader.version  # grades under another tolerance are not comparable
    assert NumericGrader(rel_tol=NumericGrader.DEFAULT_REL_TOL).version == grader.version


@pytest.mark.parametrize("rel_tol", [-1e-6, float("nan"), float("inf"), "0.1", True])
def test_numeric_grader_rejects_a_bad_tolerance(rel_tol):
    with pytest.raises(ValueError, match="rel_tol"):
        NumericGrader(rel_tol=rel_tol)


@pytest.mark.parametrize("reference", ["abc", "1 or 2", "", "twelve"])
def test_numeric_reference_must_be_one_number(reference):
    with pytest.raises(ValueError, match=r"reference: expected one number"):
        get_grader("numeric").grade("12", reference)


# ---- exact_match ----


@pytest.mark.parametrize(
    ("response", "reference", "score"),
    [
        ("  Paris. ", "paris", 1.0),
        ("New   York\n", "new york", 1.0),
        ("STRASSE", "straße", 1.0),  # casefold, not lower
        ("Paris!?", "Paris", 1.0),
        ("Paris .", "Paris", 1.0),
        ("Paris, France", "Paris France", 0.0),  # only trailing punctuation goes
        ("C++", "C", 0.0),  # symbols are not punctuation to strip
        ("Paris", "Paris, France", 0.0),
    ],
)
def test_exact_match_normalises(response, reference, score):
    assert get_grader("exact_match").grade(response, reference) == score


def test_normalize_text():
    assert normalize_text("  The  Eiffel\tTower !! ") == "the eiffel tower"


# ---- the API every grader shares ----


def test_registry_knows_three_graders():
    assert grader_names() == ["exact_match", "mmlu_pro_letter", "numeric"]
    for name in grader_names():
        grader = get_grader(name)
        assert isinstance(grader, Grader) and grader.name == name and isinstance(grader.version, str)
    assert isinstance(get_grader("exact_match"), ExactMatchGrader)


@pytest.mark.parametrize("name", ["mmlu-pro", "", None])
def test_unknown_grader_names_the_field_value_and_known_names(name):
    with pytest.raises(ValueError, match=r"name: unknown grader") as err:
        get_grader(name)
    assert repr(name) in str(err.value)
    assert all(known in str(err.value) for known in ("mmlu_pro_letter", "exact_match", "numeric"))


def test_grade_many_equals_grade_row_by_row():
    grader = get_grader("mmlu_pro_letter")
    responses = ["the answer is (A)", "Answer: B", "maybe C", "none", "(J)"]
    references = ["A", "C", "C", "D", "J"]
    scores = grader.grade_many(responses, references)
    assert scores.dtype == np.float64
    assert scores.tolist() == [grader.grade(r, a) for r, a in zip(responses, references, strict=True)]
    assert scores.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert grader.grade_many([], []).shape == (0,)
    assert get_grader("numeric").grade_many(np.array(["3/4"]), np.array(["0.75"])).tolist() == [1.0]


def test_grade_many_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"responses, references: lengths differ \(2 responses, 1 references\)"):
        get_grader("exact_match").grade_many(["a", "b"], ["a"])


def test_grade_many_names_the_bad_element():
    grader = get_grader("mmlu_pro_letter")
    with pytest.raises(ValueError, match=r"responses\[1\]: expected a str, got NoneType"):
        grader.grade_many(["the answer is (A)", None], ["A", "B"])
    with pytest.raises(ValueError, match=r"references\[0\]: expected one letter"):
        grader.grade_many(["the answer is (A)"], ["k"])
    with pytest.raises(ValueError, match=r"responses: expected a sequence of str, got str"):
        grader.grade_many("AB", ["A", "B"])  # a str is a sequence of one-letter strs: refused
    with pytest.raises(ValueError, match=r"references: expected a sequence of str, got NoneType"):
        grader.grade_many(["a"], None)


def test_grade_rejects_none():
    with pytest.raises(ValueError, match=r"response: expected a str, got NoneType"):
        get_grader("numeric").grade(None, "1")
    with pytest.raises(ValueError, match=r"reference: expected a str, got int"):
        get_grader("numeric").grade("1", 1)
    with pytest.raises(ValueError, match=r"response: expected a str"):
        extract_choice(None)
