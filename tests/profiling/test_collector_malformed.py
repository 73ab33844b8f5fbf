"""Collection never loses paid work to one bad answer, and stores answers on a timer as well as by batch size."""

from __future__ import annotations

import json
import math
from collections import Counter

import httpx
import polars as pl
import pytest

import warehouse as wh
from openai_compat import RequestFailed
from profiling import collector
from profiling.collector import RetryPolicy
from profiling.rendering import estimate_tokens
from profiling.staging import collect
from replay import FaultRates, ReplayConfig, ReplayServer

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.001, max_delay_s=0.01, timeout_s=2.0)
MODELS = ["cheap", "math-pro", "generalist"]  # they answer every prompt of the fixture
SPLITS = ["train", "validation", "test"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
PROMPT_TOKENS = estimate_tokens("Be brief.\nWhat is 2 + 2?")


def _catalog(base_url: str, usd_in: float = 1.0, usd_out: float = 2.0, models: list[str] = MODELS) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": models,
            "base_url": base_url,
            "model_id": models,
            "usd_per_mtok_in": usd_in,
            "usd_per_mtok_out": usd_out,
            "max_concurrency": 8,
            "active": True,
        }
    )


def body(content: object = "4", usage: object = None, finish: object = "stop", **extra: object) -> bytes:
    """A chat completion's JSON body; ``usage=None`` leaves it out."""
    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]}
    if usage is not None:
        payload["usage"] = usage
    return json.dumps({**payload, **extra}).encode()


# ---- one answer's fields ----


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"choices": [{"message": {"content": "cut',
        b"\xff\xfe\x00",
        b"[]",
        b'"a string"',
        b"null",
        b"{}",
        b'{"choices": []}',
        b'{"choices": "abc"}',
        b'{"choices": {"0": {"message": {"content": "4"}}}}',
        b'{"choices": [{}]}',
        b'{"choices": [{"message": "4"}]}',
        body(content=None),
        body(content=42),
        body(content=[{"type": "text", "text": "4"}]),
        b"[" * 100_000 + b"]" * 100_000,  # deep enough to exhaust the parser's recursion
    ],
    ids=lambda raw: raw[:40].decode("utf-8", "replace"),
)
def test_a_body_without_a_text_answer_is_a_retryable_malformed_body(raw):
    with pytest.raises(RequestFailed, match="MalformedBody"):
        collector._read_answer(raw, MESSAGES, 1.0, 2.0)


@pytest.mark.parametrize(
    ("usage", "repaired"),
    [
        ({"prompt_tokens": 7, "completion_tokens": 3}, []),
        ({"prompt_tokens": 7.0, "completion_tokens": 3}, []),
        ({"prompt_tokens": -1, "completion_tokens": 3}, ["usage.prompt_tokens"]),
        ({"prompt_tokens": "n/a", "completion_tokens": 3}, ["usage.prompt_tokens"]),
        ({"prompt_tokens": "7", "completion_tokens": 3}, ["usage.prompt_tokens"]),
        ({"prompt_tokens": 1.5, "completion_tokens": 3}, ["usage.prompt_tokens"]),
        ({"prompt_tokens": True, "completion_tokens": 3}, ["usage.prompt_tokens"]),
        ({"prompt_tokens": None, "completion_tokens": 3}, ["usage.prompt_tokens"]),
        ({"prompt_tokens": [7], "completion_tokens": 3}, ["usage.prompt_tokens"]),
        ({"prompt_tokens": 7, "completion_tokens": 2**31}, ["usage.completion_tokens"]),
        ({"prompt_tokens": 7, "completion_tokens": -3}, ["usage.completion_tokens"]),
        ({"prompt_tokens": 7}, ["usage.completion_tokens"]),
        ("n/a", ["usage.prompt_tokens", "usage.completion_tokens"]),
        ([7, 3], ["usage.prompt_tokens", "usage.completion_tokens"]),
        (None, ["usage.prompt_tokens", "usage.completion_tokens"]),  # no usage at all
    ],
)
def test_a_malformed_token_count_is_estimated_from_the_text(usage, repaired):
    answer = collector._read_answer(body(usage=usage), MESSAGES, 1.0, 2.0)
    expected = {"prompt_tokens": 7, "completion_tokens": 3}
    if "usage.prompt_tokens" in repaired:
        expected["prompt_tokens"] = PROMPT_TOKENS
    if "usage.completion_tokens" in repaired:
        expected["completion_tokens"] = estimate_tokens("4")
    assert {k: answer[k] for k in expected} == expected
    assert all(type(answer[k]) is int for k in expected)
    assert answer["cost_usd"] == pytest.approx((expected["prompt_tokens"] + 2 * expected["completion_tokens"]) / 1e6)
    assert answer["repaired"] == repaired and answer["response"] == "4"


@pytest.mark.parametrize("count", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_counts_in_the_json_are_estimated(count):
    raw = b'{"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": %s, "completion_tokens": 3}}'
    answer = collector._read_answer(raw % count, MESSAGES, 1.0, 2.0)
    assert answer["prompt_tokens"] == PROMPT_TOKENS and answer["repaired"] == ["usage.prompt_tokens"]


@pytest.mark.parametrize(
    ("usd_in", "usd_out", "cost"), [(math.inf, 1.0, None), (1.0, math.nan, None), (None, 1.0, None), (0.0, 0.0, 0.0)]
)
def test_a_cost_that_is_not_finite_is_left_null(usd_in, usd_out, cost):
    answer = collector._read_answer(body(usage={"prompt_tokens": 7, "completion_tokens": 3}), MESSAGES, usd_in, usd_out)
    assert answer["cost_usd"] == cost and answer["response"] == "4"
    assert answer["repaired"] == (["cost_usd"] if usd_in is not None and cost is None else [])


def test_characters_utf8_cannot_hold_are_replaced_and_a_bad_finish_reason_is_null():
    raw = b'{"choices": [{"message": {"content": "half an emoji \\ud83d!"}, "finish_reason": 7}]}'
    answer = collector._read_answer(raw, MESSAGES, 1.0, 2.0)
    assert answer["response"] == "half an emoji \ufffd!" and answer["finish_reason"] is None
    assert answer["repaired"][:2] == ["content", "finish_reason"]
    answer["response"].encode("utf-8")  # storable
    raw = b'{"choices": [{"message": {"content": "4"}, "finish_reason": "st\\udc00p"}]}'
    assert collector._read_answer(raw, MESSAGES, 1.0, 2.0)["finish_reason"] == "st\ufffdp"


# ---- whole runs against the replay endpoint ----


def _outcomes(server: ReplayServer) -> dict[tuple[str, str], Counter]:
    per_pair: dict[tuple[str, str], Counter] = {}
    for row in server.request_log.rows():
        per_pair.setdefault((row["model"], row["prompt_id"]), Counter())[row["outcome"]] += row["count"]
    return per_pair


def test_malformed_answers_are_estimates_or_failures_and_a_rerun_does_not_crash(con, mmlu_like_dir):
    faults = FaultRates(malformed_usage=0.3, malformed_body=0.3)
    with ReplayServer(mmlu_like_dir, ReplayConfig(faults=faults, seed=5)) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        report = collect(con, MODELS, SPLITS, policy=FAST, progress=False)
        outcomes = _outcomes(server)
        server.request_log.reset()
        again = collect(con, MODELS, SPLITS, policy=FAST, progress=False)
        asked_again = set(_outcomes(server))
    n_pairs = len(MODELS) * wh.read_prompts(con).height
    answered = {pair for pair, seen in outcomes.items() if seen["ok"] + seen["malformed_usage"]}
    estimated = {pair for pair, seen in outcomes.items() if seen["malformed_usage"]}
    never = {pair for pair, seen in outcomes.items() if set(seen) == {"malformed_body"}}
    assert report.requested == n_pairs and report.stored + report.failed == n_pairs
    assert len(estimated) > 10 and len(never) > 5  # the seeded draws gave both kinds
    first = wh.read_responses(con).filter(pl.col("run_id") == report.run_id)
    assert set(first.select("model", "prompt_id").iter_rows()) == answered and first.height == report.stored
    assert all(seen["ok"] + seen["malformed_usage"] == 1 for pair, seen in outcomes.items() if pair in answered)
    # estimates: the replay server's true counts are estimates too, so a repaired answer matches a good one
    assert first["completion_tokens"].to_list() == [estimate_tokens(r) for r in first["response"]]
    assert (first.group_by("prompt_id").agg(pl.col("prompt_tokens").n_unique())["prompt_tokens"] == 1).all()
    assert first["cost_usd"].is_not_null().all() and (first["cost_usd"] > 0).all()
    assert set(report.repaired) <= {"usage.prompt_tokens", "usage.completion_tokens"}
    assert len(estimated) <= sum(report.repaired.values()) <= 2 * len(estimated)
    assert report.errors["MalformedBody"] == sum(seen["malformed_body"] for seen in outcomes.values())
    failures = wh.read_failures(con)
    assert again.requested == len(never) and asked_again == never  # a re-run asks only those, and completes
    assert again.stored + again.failed == again.requested
    assert set(failures["last_error_class"]) <= {"MalformedBody"}
    assert wh.read_responses(con).height == report.stored + again.stored


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_tokens": -1},
        {"completion_tokens": 2**31},
        {"cost_usd": math.nan},
        {"cost_usd": -0.5},
        {"response": "\ud800"},
        {"finish_reason": b"stop"},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_an_answer_the_warehouse_would_refuse_fails_alone_and_its_batch_is_stored(con, mmlu_like_dir, monkeypatch, bad):
    read_answer, calls = collector._read_answer, []

    def one_bad_answer(*args, **kwargs):
        calls.append(1)
        answer = read_answer(*args, **kwargs)
        return answer | bad if len(calls) == 1 else answer

    monkeypatch.setattr(collector, "_read_answer", one_bad_answer)
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        report = collect(con, ["cheap"], SPLITS, policy=FAST, progress=False)  # all in one batch of 512
        monkeypatch.undo()
        again = collect(con, ["cheap"], SPLITS, policy=FAST, progress=False)
    assert report.requested == 120 and report.stored == 119 and report.failed == 1
    assert report.errors == Counter({"UnstorableAnswer": 1})
    assert again.requested == 1 and again.stored == 1  # the failed pair, asked again
    assert wh.read_responses(con).height == 120 and wh.read_failures(con).height == 0


def test_an_unforeseen_exception_costs_its_pair_not_the_run(con, mmlu_like_dir, monkeypatch):
    read_answer, calls = collector._read_answer, []

    def third_raises(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a bug, or an answer nobody foresaw")
        return read_answer(*args, **kwargs)

    monkeypatch.setattr(collector, "_read_answer", third_raises)
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        report = collect(con, ["cheap"], SPLITS, policy=FAST, progress=False)
    assert report.stored == 119 and report.failed == 1 and report.errors == Counter({"RuntimeError": 1})
    failure = wh.read_failures(con).row(0, named=True)
    assert failure["last_error_class"] == "RuntimeError" and failure["attempts"] == 1


def test_prices_that_are_not_finite_store_answers_without_a_cost(con, mmlu_like_dir):
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, models=["cheap"]))
        # the llms writer refuses it now; a table written before it did may still hold one
        con.execute("UPDATE llms SET usd_per_mtok_in = 'inf'::DOUBLE WHERE name = 'cheap'")
        report = collect(con, ["cheap"], ["validation"], policy=FAST, progress=False)
    stored = wh.read_responses(con)
    assert report.failed == 0 and report.stored == stored.height > 0
    assert stored["cost_usd"].is_null().all() and report.repaired == Counter({"cost_usd": stored.height})


# ---- batches on a timer ----


def test_answers_are_stored_every_flush_interval_while_a_batch_is_not_full(con, mmlu_like_dir):
    """One model, one request at a time, 0.1 s each: 12 answers in ~1.2 s, far from a batch of 512."""
    lines: list[str] = []
    with ReplayServer(mmlu_like_dir, ReplayConfig(latency_ms=100)) as server:
        wh.upsert_llms(con, _catalog(server.base_url, models=["cheap"]).with_columns(max_concurrency=pl.lit(1)))
        report = collect(
            con, ["cheap"], ["validation"], policy=FAST, progress=False, log_progress=lines.append, flush_interval_s=0.3
        )
    assert report.stored == 12
    done = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("collected ")]  # "collected 4/12"
    assert len(done) >= 3 and done == sorted(done) and done[0] < 12 and done[-1] == 12


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"flush_interval_s": 0}, "flush_interval_s=0"),
        ({"flush_interval_s": -1.0}, "flush_interval_s=-1.0"),
        ({"flush_interval_s": math.nan}, "flush_interval_s=nan"),
        ({"flush_interval_s": math.inf}, "flush_interval_s=inf"),
    ],
)
def test_batching_settings_are_checked_before_anything_is_asked(con, setting, message):
    with pytest.raises(ValueError, match=message):
        collect(con, progress=False, **setting)


# ---- the replay endpoint's malformed answers ----


def test_replay_malformed_faults_send_valid_json_with_bad_usage_or_no_answer(mmlu_like_dir, con):
    text = wh.read_prompts(con)["prompt"][0]
    request = {"model": "cheap", "messages": [{"role": "user", "content": text}]}
    usages, bodies = [], []
    for kind, out in (("malformed_usage", usages), ("malformed_body", bodies)):
        config = ReplayConfig(faults=FaultRates(**{kind: 1.0}), seed=1)
        with ReplayServer(mmlu_like_dir, config) as server, httpx.Client(base_url=server.base_url) as http:
            for _ in range(30):
                response = http.post("/chat/completions", json=request)
                assert response.status_code == 200
                out.append(response.json())
            stream = http.post("/chat/completions", json={**request, "stream": True}).text
            assert server.request_log.totals() == {kind: 31}
    assert all(isinstance(b["choices"][0]["message"]["content"], str) for b in usages)
    shapes = {
        json.dumps(b["usage"]) if isinstance(b["usage"], str) else json.dumps(sorted(b["usage"].items()))
        for b in usages
    }
    assert len(shapes) >= 5  # several kinds of malformed usage
    for usage in (b["usage"] for b in usages):
        counts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")] if isinstance(usage, dict) else []
        assert not counts or not all(isinstance(c, int) and 0 <= c < 2**31 for c in counts)
    texts = [b.get("choices") and b["choices"][0].get("message", {}).get("content") for b in bodies]
    assert not any(isinstance(t, str) for t in texts) and len({json.dumps(b) for b in texts}) >= 3
    assert '"choices"' not in stream and stream.endswith("data: [DONE]\n\n")
