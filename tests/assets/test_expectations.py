"""The data checks' properties on small frames: each says what is wrong in the user's terms, blocks or warns."""

from __future__ import annotations

import polars as pl

from assets.expectations import all_blocking_passed, check_grades, check_responses


def _responses(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": "m",
            "prompt_id": [f"p{i}" for i in range(n)],
            "response": "The answer is (A).",
            "prompt_tokens": 12,
            "completion_tokens": 5,
            "source": "collected",
        }
    )


def test_each_property_of_the_answers_names_what_is_wrong():
    frame = _responses(50).with_columns(
        prompt_id=pl.when(pl.int_range(50) == 1).then(pl.lit("p0")).otherwise("prompt_id"),  # p0 twice
        response=pl.when(pl.int_range(50).is_in([5, 6])).then(pl.lit("")).otherwise("response"),
        prompt_tokens=pl.when(pl.int_range(50) == 7).then(0).otherwise("prompt_tokens"),
    )
    outcomes = check_responses(frame, n_validation=60)
    assert {p: (o.passed, o.blocking) for p, o in outcomes.items()} == {
        "schema": (False, True),
        "coverage": (False, True),
        "empty_responses": (False, False),
        "token_counts": (False, False),
    }
    assert outcomes["coverage"].message == "coverage 82% < 98% (49 of 60 validation prompts)"
    assert outcomes["schema"].message == "2 rows repeat a (model, prompt_id) pair (e.g. ('m', 'p0'), ('m', 'p0'))"
    assert outcomes["empty_responses"].message == "4% empty responses > 1% allowed (2 of 50 collected answers)"
    assert outcomes["token_counts"].message == "1 of 50 rows have prompt_tokens < 1 (e.g. 0)"
    assert outcomes["coverage"].numbers == {"coverage_percent": 81.67, "answered": 49, "validation_prompts": 60}
    assert outcomes["schema"].failures[0]["expectation"] == "expect_compound_columns_to_be_unique"
    assert outcomes["coverage"].failures[0]["observed"] == 49  # prompts answered, not rows


def test_clean_answers_pass_and_imported_ones_need_no_text_or_tokens():
    clean = check_responses(_responses(49), n_validation=50)
    assert all_blocking_passed(clean) and all(o.passed for o in clean.values())
    assert clean["coverage"].message == "coverage 98% >= 98% (49 of 50 validation prompts)"
    imported = _responses(10).with_columns(
        response=pl.lit(None, pl.String), prompt_tokens=pl.lit(None, pl.Int64), source=pl.lit("imported")
    )
    outcomes = check_responses(imported, n_validation=10)
    assert all(o.passed for o in outcomes.values())
    assert outcomes["empty_responses"].message == "no collected answers (imported results carry no text)"


def test_grades_out_of_range_or_missing_block_with_the_values_named():
    grades = pl.DataFrame({"model": "m", "prompt_id": [f"p{i}" for i in range(10)], "score": [1.0] * 8 + [1.5, None]})
    outcomes = check_grades(grades, n_validation=10)
    assert not all_blocking_passed(outcomes) and outcomes["schema"].passed and outcomes["coverage"].passed
    assert outcomes["score_range"].blocking and not outcomes["score_range"].passed
    assert set(outcomes["score_range"].message.split("; ")) == {
        "1 of 10 rows have no score",
        "1 of 10 rows have score outside [0, 1] (e.g. 1.5)",
    }
    assert check_grades(grades.drop("score"), n_validation=10)["schema"].message.startswith("no column score")
