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
    grader_catalog,
    grader_names,
    normalize_text,
    trace_choice,
    validate_grader,
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


BUILTINS = ["code", "exact_match", "llm_judge", "mmlu_pro_letter", "multiple_choice", "numeric", "regex"]


def test_registry_knows_the_builtin_graders():
    assert grader_names() == BUILTINS
    for name in BUILTINS:
        required = {"llm_judge": {"judge": "j"}, "regex": {"pattern": "x"}}  # the graders with no default for one
        grader = get_grader(name, required.get(name))
        assert isinstance(grader, Grader) and grader.name == name and isinstance(grader.version, str)
    assert isinstance(get_grader("exact_match"), ExactMatchGrader)


def test_the_existing_graders_keep_their_versions():
    # Stored grades carry these: a change regrades every stored answer.
    assert [get_grader(n).version for n in ("mmlu_pro_letter", "exact_match", "numeric")] == ["1", "1", "1"]


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
    with pytest.raises(ValueError, match=r"references\[1\]: expected a str, got NoneType"):
        get_grader("numeric").grade_many(["1", "2"], ["1", None])


def test_grade_rejects_none():
    with pytest.raises(ValueError, match=r"response: expected a str, got NoneType"):
        get_grader("numeric").grade(None, "1")
    with pytest.raises(ValueError, match=r"reference: expected a str, got int"):
        get_grader("numeric").grade("1", 1)
    with pytest.raises(ValueError, match=r"response: expected a str"):
        extract_choice(None)


# ---- options and versions ----


def test_options_that_are_not_default_are_part_of_the_version():
    assert get_grader("numeric", {"rel_tol": 0.05}).version == "1+rel_tol=0.05"
    assert get_grader("numeric", {"rel_tol": 0.05, "abs_tol": 0.5}).version == "1+rel_tol=0.05+abs_tol=0.5"
    assert get_grader("numeric", {"abs_tol": 0}).version == "1"  # the default given explicitly: same grader
    assert get_grader("exact_match", {"case_sensitive": True}).version == "1+case_sensitive=True"
    code = get_grader("code", {"workers": 4, "tmp_dir": "/tmp"})
    assert code.version == "1"  # parallelism and scratch space cannot change a score
    assert get_grader("code", {"timeout_s": 3}).version == "1+timeout_s=3.0"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("numeric", {"rel_tol": -1}, r"options\.rel_tol: expected a finite number >= 0, got -1"),
        ("numeric", {"tolerance": 0.1}, r"options\.tolerance: unknown option of grader 'numeric' .*rel_tol, abs_tol"),
        ("exact_match", {"case_sensitive": "yes"}, r"options\.case_sensitive: expected true or false, got 'yes'"),
        ("multiple_choice", {"n_options": 27}, r"options\.n_options: expected an integer in \[2, 26\], got 27"),
        ("multiple_choice", {"letters": "AAB"}, r"options\.letters: expected distinct capital letters"),
        ("multiple_choice", {"letters": "ABC", "n_options": 5}, r"options\.letters: 'ABC' does not have n_options=5"),
        ("multiple_choice", {"pattern": "[A-D]"}, r"options\.pattern: expected a regular expression with one group"),
        ("regex", {}, r"options\.pattern: give a pattern or use_reference_as_pattern"),
        ("regex", {"pattern": "(", "ignore_case": True}, r"options\.pattern: not a regular expression"),
        ("llm_judge", {}, r"options\.judge: required by grader 'llm_judge'"),
        ("llm_judge", {"judge": "j", "rubric": "no placeholder"}, r"options\.rubric: the rubric must contain"),
        ("code", {"entry_point": "not an identifier"}, r"options\.entry_point: expected a Python identifier"),
        ("numeric", ["rel_tol"], r"options: expected a mapping"),
    ],
)
def test_bad_options_name_the_option_and_the_value(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_grader(name, options)


def test_numeric_abs_tol_matches_near_zero():
    grader = get_grader("numeric", {"abs_tol": 0.01})
    assert grader.grade("0.005", "0") == 1.0
    assert grader.grade("0.02", "0") == 0.0
    assert NumericGrader(rel_tol=0.0, abs_tol=1.0).grade("10.9", "10") == 1.0


def test_exact_match_options():
    assert get_grader("exact_match", {"case_sensitive": True}).grade("paris", "Paris") == 0.0
    assert get_grader("exact_match", {"case_sensitive": True}).grade(" Paris. ", "Paris") == 1.0
    assert get_grader("exact_match", {"strip_punctuation": False}).grade("Paris.", "paris") == 0.0
    assert get_grader("exact_match", {"strip_punctuation": False}).grade(" PARIS ", "paris") == 1.0


# ---- multiple_choice ----


def test_multiple_choice_defaults_to_abcd_with_mmlu_pros_chain():
    grader = get_grader("multiple_choice")
    assert grader.valid_letters == "ABCD" and grader.version == "1"
    assert grader.grade("the answer is (B)", "B") == 1.0
    assert grader.grade("the answer is (E). Or D", "D") == 1.0  # E is no choice: the chain goes on to D
    assert grader.grade("Answer: C", "C") == 1.0
    with pytest.raises(ValueError, match=r"reference: expected one letter of ABCD, got 'E'"):
        grader.grade("E", "E")


def test_multiple_choice_letters_and_counts():
    five = get_grader("multiple_choice", {"n_options": 5})
    assert five.grade("I pick E", "E") == 1.0
    assert five.version == get_grader("multiple_choice", {"letters": "ABCDE"}).version == "1+letters='ABCDE'"
    yes_no = get_grader("multiple_choice", {"letters": "YN"})
    assert yes_no.grade("Y", "Y") == 1.0 and yes_no.grade("answer is A", "N") == 0.0


def test_multiple_choice_with_all_ten_letters_equals_mmlu_pro_letter():
    rng = random.Random(3)
    pieces = ["answer is ", "Answer:", " ", "\n", "(", ")", "A", "C", "J", "K", "b", ". "]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(2000)]
    ten, letter = get_grader("multiple_choice", {"n_options": 10}), get_grader("mmlu_pro_letter")
    assert ten.grade_many(texts, ["C"] * len(texts)).tolist() == letter.grade_many(texts, ["C"] * len(texts)).tolist()


def test_multiple_choice_custom_pattern_takes_the_last_valid_match():
    grader = get_grader("multiple_choice", {"pattern": r"(?i)choice:\s*(\w)"})
    assert grader.extract("choice: a? no. Choice: B, then choice: Z") == "B"  # "a" is lower case, Z no letter
    assert grader.grade("choice: C", "C") == 1.0
    assert grader.grade("the answer is (C)", "C") == 0.0  # the default chain is not used any more
    assert "pattern=" in grader.version


# ---- regex ----


def test_regex_grader_searches_anywhere():
    grader = get_grader("regex", {"pattern": r"\b42\b"})
    assert grader.grade("so it is 42.", None) == 1.0
    assert grader.grade("so it is 420", "ignored") == 0.0
    assert get_grader("regex", {"pattern": "paris", "ignore_case": True}).grade("PARIS", None) == 1.0
    by_reference = get_grader("regex", {"use_reference_as_pattern": True})
    assert by_reference.grade_many(["x = 3", "x = 4"], [r"x\s*=\s*3", r"x\s*=\s*3"]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"references\[0\]: not a regular expression"):
        by_reference.grade_many(["x"], ["("])
    with pytest.raises(ValueError, match=r"options\.pattern: give a pattern or"):
        get_grader("regex", {"pattern": "x", "use_reference_as_pattern": True})


# ---- validate_grader: what the importer calls ----


@pytest.mark.parametrize(
    ("name", "options", "references", "tests", "message"),
    [
        ("numeric", None, ["1", "2", "three"], None, r"references\[2\]: expected one number, got 'three'"),
        (
            "multiple_choice",
            {"n_options": 3},
            ["A", "D"],
            None,
            r"references\[1\]: expected one letter of ABC, got 'D'",
        ),
        ("mmlu_pro_letter", None, ["A", None], None, r"references\[1\]: expected a str, got NoneType"),
        ("code", None, [None, None], ["assert True", " "], r"tests\[1\]: grader 'code' needs tests"),
        ("code", None, [None], None, r"tests: grader 'code' needs tests for each of the 1 rows"),
        ("code", None, None, ["def check(candidate):\n    pass"], r"tests\[0\]: the tests define check\(candidate\)"),
        ("regex", {"use_reference_as_pattern": True}, ["ok", "(("], None, r"references\[1\]: not a regular expr"),
        ("no_such_grader", None, None, None, r"name: unknown grader 'no_such_grader'; known graders: code, "),
        ("numeric", {"rel_tol": "x"}, None, None, r"options\.rel_tol: expected a finite number"),
    ],
)
def test_validate_grader_names_the_row_and_the_value(name, options, references, tests, message):
    with pytest.raises(ValueError, match=message):
        validate_grader(name, options, references, tests)


def test_validate_grader_accepts_what_grades():
    validate_grader("numeric", None, ["1", "$2,000", "3/4"])
    validate_grader("code", {"entry_point": "f"}, [None], ["def check(candidate):\n    assert candidate(1)"])
    validate_grader("llm_judge", {"judge": "j"}, [None, "ref"])  # a judge needs no reference
    validate_grader("regex", {"pattern": "x"}, [None])


# ---- the catalog ----


def test_catalog_lists_every_grader_with_options_and_defaults():
    catalog = {entry["name"]: entry for entry in grader_catalog()}
    assert list(catalog) == BUILTINS
    for entry in catalog.values():
        assert entry["description"] and "\n" not in entry["description"]
        assert entry["source"] == "built-in" and entry["error"] is None
    numeric = catalog["numeric"]
    assert numeric["version"] == "1"
    assert [(o["name"], o["default"]) for o in numeric["options"]] == [("rel_tol", 1e-6), ("abs_tol", 0.0)]
    judge_options = {o["name"]: o for o in catalog["llm_judge"]["options"]}
    assert judge_options["judge"]["required"] and not judge_options["scale"]["required"]
    assert judge_options["scale"]["default"] == 10.0
    assert {o["name"]: o["versioned"] for o in catalog["code"]["options"]}["workers"] is False
