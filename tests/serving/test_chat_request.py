"""The gateway's request checks: every hostile or malformed field is refused naming the field and the value."""

from __future__ import annotations

import pytest

from serving.chat_request import ChatRequestError, Limits, parse_chat_request

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def _body(**extra) -> dict:
    return {"model": "uniroute", "messages": MESSAGES, **extra}


def test_a_routed_request_keeps_openai_fields_and_takes_out_the_routing_ones():
    request = parse_chat_request(_body(temperature=0.2, max_tokens=64, max_cost_per_query=0.001, candidates=["a"]))
    assert request.routed and request.prompt == "What is 2 + 2?" and request.stream is False
    assert request.max_cost_per_query == 0.001 and request.candidates == ["a"]
    assert request.budget == ("max_cost_per_query", 0.001)
    assert request.forward == {
        "model": "uniroute",
        "messages": MESSAGES,
        "stream": False,
        "temperature": 0.2,
        "max_tokens": 64,
    }
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    assert parse_chat_request({"model": "uniroute", "messages": parts}).prompt == "Hi there"


@pytest.mark.parametrize(
    ("body", "param", "shown"),
    [
        (["not", "an", "object"], "body", "list"),
        ({"model": ["uniroute"], "messages": MESSAGES}, "model", "['uniroute']"),
        (_body(stream="false"), "stream", "'false'"),
        (_body(n=3), "n", "3"),
        (_body(max_tokens=10**9), "max_tokens", "1000000000"),
        (_body(max_tokens=True), "max_tokens", "True"),
        (_body(cost_weight=float("inf")), "cost_weight", "inf"),
        (_body(cost_weight=-1), "cost_weight", "-1"),
        (_body(max_cost_per_query=float("nan")), "max_cost_per_query", "nan"),
        (_body(min_accuracy=1.5), "min_accuracy", "1.5"),
        (_body(candidates="gpt-4o"), "candidates", "'gpt-4o'"),
        (_body(candidates=["a", "a"]), "candidates", "['a', 'a']"),
        (_body(temperature=9), "temperature", "9"),
        (_body(tools="all"), "tools", "'all'"),
        (_body(logprobs="yes"), "logprobs", "'yes'"),
        (_body(functions=[]), "functions", "unknown field"),
        (_body(cost_weight=0.1, min_accuracy=0.5), "cost_weight", "one of"),
        ({"model": "gpt-4o", "messages": MESSAGES, "max_cost_per_query": 0.01}, "max_cost_per_query", "not routed"),
        ({"model": "uniroute", "messages": [{"role": "system", "content": "x"}]}, "messages", "user message"),
        ({"model": "uniroute", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "'wizard'"),
        ({"model": "uniroute", "messages": []}, "messages", "[]"),
        ({"model": "uniroute", "messages": [{"role": "user", "content": "hi \ud800"}]}, "messages[0].content", "3"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
            "messages[0].content[0].text",
            "surrogate",
        ),
    ],
)
def test_bad_fields_are_named_with_their_value(body, param, shown):
    with pytest.raises(ChatRequestError) as info:
        parse_chat_request(body)
    assert info.value.param == param and shown in str(info.value) and param in str(info.value)


def test_limits_are_configurable():
    with pytest.raises(ChatRequestError, match="messages"):
        parse_chat_request(_body(messages=MESSAGES * 3), Limits(max_messages=4))
    assert parse_chat_request({"model": "m", "messages": MESSAGES, "max_tokens": 8}).forward["max_tokens"] == 8
