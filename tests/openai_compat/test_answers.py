"""openai_compat.answers: a body's JSON, its answer (or none), its token counts and its cost."""

from __future__ import annotations

import json
import math

import pytest

import openai_compat.answers
from openai_compat import MAX_BODY_DEPTH, answer_text, cost_usd, has_answer, parse_body, realised_cost, token_count


def completion(message: object) -> dict:
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b'{"choices": [', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000], ids=lambda r: r[:12]
)
def test_a_body_that_is_not_json_is_none_never_an_exception(raw):
    assert parse_body(raw) is None


def test_a_body_nested_past_the_depth_never_reaches_the_recursive_parser(monkeypatch):
    """Deep JSON is refused before ``json.loads`` recurses toward the interpreter's limit (where even a finalizer
    the garbage collector runs fails); brackets inside strings do not count, and a body at the limit parses."""
    parsed = []
    loads = json.loads
    monkeypatch.setattr(openai_compat.answers.json, "loads", lambda raw: parsed.append(len(raw)) or loads(raw))
    assert parse_body(b"[" * 100_000 + b"]" * 100_000) is None and parsed == []
    deepest = b"[" * MAX_BODY_DEPTH + b"]" * MAX_BODY_DEPTH
    assert parse_body(deepest) is not None and parse_body(b"[" + deepest + b"]") is None
    in_text = json.dumps(completion({"role": "assistant", "content": "[{" * 5_000})).encode()
    assert answer_text(parse_body(in_text)) == "[{" * 5_000


def test_the_answer_is_the_first_choices_text():
    payload = parse_body(json.dumps(completion({"role": "assistant", "content": "4"})).encode())
    assert answer_text(payload) == "4" and has_answer(payload)


@pytest.mark.parametrize(
    "payload",
    [None, [], "text", {}, {"choices": []}, {"choices": "abc"}, {"choices": [{}]}, {"choices": [None]}]
    + [completion(m) for m in (None, "4", {"content": None}, {"content": 42}, {"content": [{"text": "4"}]})],
    ids=repr,
)
def test_a_body_without_text_has_no_answer_text(payload):
    assert answer_text(payload) is None


@pytest.mark.parametrize(
    ("message", "answered"),
    [
        ({"content": None, "tool_calls": [{"id": "call_1"}]}, True),
        ({"content": None, "refusal": "I cannot help with that."}, True),
        ({"content": None}, False),
        ({"content": 3}, False),
        (None, False),
    ],
)
def test_tool_calls_and_refusals_are_answers_without_text(message, answered):
    assert has_answer(completion(message)) is answered and answer_text(completion(message)) is None


@pytest.mark.parametrize(
    ("value", "count"),
    [
        *[(7, 7), (7.0, 7), (0, 0), (-1, None), (1.5, None), (True, None), ("7", None), (None, None)],
        *[(math.nan, None), (math.inf, None), (2**31, None), (2**31 - 1, 2**31 - 1)],
    ],
    ids=repr,
)
def test_a_token_count_is_a_whole_number_that_fits_or_none(value, count):
    assert token_count({"prompt_tokens": value}, "prompt_tokens") == count
    assert token_count("n/a", "prompt_tokens") is None


def test_a_cost_that_is_not_finite_is_none():
    assert cost_usd(1000, 100, 2.0, 10.0) == pytest.approx(0.003)
    assert cost_usd(1000, 100, math.inf, 10.0) is None
    assert (
        realised_cost(
            {"usd_per_mtok_in": math.inf, "usd_per_mtok_out": 1.0}, {"prompt_tokens": 1, "completion_tokens": 1}
        )
        is None
    )


def test_realised_cost_is_prices_times_tokens_or_none():
    priced = {"usd_per_mtok_in": 2.0, "usd_per_mtok_out": 10.0}
    assert realised_cost(priced, {"prompt_tokens": 1000, "completion_tokens": 100}) == pytest.approx(0.003)
    assert realised_cost(priced, None) is None
    assert (
        realised_cost({"usd_per_mtok_in": None, "usd_per_mtok_out": 1.0}, {"prompt_tokens": 1, "completion_tokens": 1})
        is None
    )


def test_an_llm_priced_per_query_costs_its_price_whatever_its_usage():
    per_query = {"usd_per_mtok_in": None, "usd_per_mtok_out": None, "usd_per_query": 0.004}
    assert realised_cost(per_query, {"prompt_tokens": 1000, "completion_tokens": 100}) == 0.004
    assert realised_cost(per_query, None) == 0.004  # no usage needed to price it


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "n/a", "completion_tokens": 3},
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": True, "completion_tokens": 3},
    ],
)
def test_a_malformed_usage_gives_no_realised_cost(usage):
    assert realised_cost({"usd_per_mtok_in": 1.0, "usd_per_mtok_out": 1.0}, usage) is None
    assert realised_cost(
        {"usd_per_mtok_in": 1.0, "usd_per_mtok_out": 2.0}, {"prompt_tokens": 10, "completion_tokens": 5}
    ) == pytest.approx(2e-5)
