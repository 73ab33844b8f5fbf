"""Feedback and sampled traffic below the gateway: rating bodies checked field by field, request ids that name their
key across workers and restarts, the decision-file index for ids no MAC explains, the files' schemas, the sample."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import polars as pl
import pytest

from serving.decisions import DecisionLog
from serving.feedback import (
    MAX_BATCH,
    SCHEMA,
    FeedbackError,
    FeedbackLog,
    OwnerIndex,
    Ownership,
    RequestIds,
    feedback_files,
    feedback_record,
    parse_feedback,
    read_feedback,
)
from serving.key_policy import parse_entry
from serving.traffic import SCHEMA as TRAFFIC_SCHEMA
from serving.traffic import TrafficLog, answer_text, read_traffic, sampled, traffic_files


def test_a_rating_is_a_score_or_thumbs_alone_or_in_a_batch():
    assert [(r.request_id, r.score) for r in parse_feedback({"request_id": "a", "score": 0.25})] == [("a", 0.25)]
    assert parse_feedback({"request_id": "a", "thumbs": "down"})[0].score == 0.0
    batch = parse_feedback({"feedback": [{"request_id": "a", "score": 1}, {"request_id": "b", "thumbs": "up"}]})
    assert [(r.request_id, r.score, r.where) for r in batch] == [("a", 1.0, "feedback[0]."), ("b", 1.0, "feedback[1].")]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"request_id": "a", "score": 1.5}, "score", "score=1.5"),
        ({"request_id": "a", "score": True}, "score", "score=True"),
        ({"request_id": "a", "score": "0.5"}, "score", "score='0.5'"),
        ({"request_id": "a", "thumbs": "sideways"}, "thumbs", "thumbs='sideways'"),
        ({"request_id": "a", "score": 1, "thumbs": "up"}, "score", "give one"),
        ({"request_id": "a"}, "score", "give one"),
        ({"request_id": 7, "score": 1}, "request_id", "request_id=7"),
        ({"request_id": "", "score": 1}, "request_id", "request_id=''"),
        ({"request_id": "a", "score": 1, "rating": 5}, "rating", "unknown field"),
        ({"feedback": []}, "feedback", "a list of 0"),
        ({"feedback": [{"request_id": "a", "score": 1}] * (MAX_BATCH + 1)}, "feedback", f"1 to {MAX_BATCH}"),
        ({"feedback": [{"request_id": "a", "score": 1}, {"request_id": "b", "score": -1}]}, "feedback[1].score", "-1"),
        ({"feedback": ["a"]}, "feedback[0]", "JSON object"),
        ({"feedback": [], "score": 1}, "score", "beside feedback"),
    ],
)
def test_a_bad_rating_names_its_field_and_value(body, param, says):
    with pytest.raises(FeedbackError) as refused:
        parse_feedback(body)
    assert refused.value.param == param and says in str(refused.value)


def test_request_ids_name_their_key_and_every_worker_shares_the_secret(tmp_path):
    path = tmp_path / "gateway" / "request-ids.secret"
    with ThreadPoolExecutor(8) as pool:  # workers starting at once: one secret, each reads it whole
        loaded = list(pool.map(lambda _: RequestIds.load(path), range(8)))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_bytes()) == 32
    signed = loaded[0].sign("0123456789abcdef", "alice")
    assert len(signed) == 32 and signed.startswith("0123456789abcdef")
    assert all(ids.made_for(signed, "alice") and not ids.made_for(signed, "bob") for ids in loaded)
    assert loaded[3].ownership(signed, "alice", ["bob"]) is Ownership.OWN
    assert loaded[5].ownership(signed, "bob", ["alice", "carol"]) is Ownership.OTHER
    assert loaded[1].ownership(signed, "bob", ["carol"]) is None  # no MAC explains it: ask the decision files
    assert loaded[1].ownership("0123456789abcdef", "alice", []) is None  # unsigned
    path.unlink()  # a new secret: the old ids are no longer explained
    assert not RequestIds.load(path).made_for(signed, "alice")


def test_ids_no_mac_explains_are_found_in_the_decision_files_loaded_ones_too(tmp_path):
    with DecisionLog(tmp_path, flush_interval_s=0.01) as log:
        log.record({"request_id": "r-alice", "key_id": "alice", "status": 200})
    index = OwnerIndex(tmp_path)
    assert index.ownership("r-alice", "alice") is Ownership.OWN
    assert index.ownership("r-alice", "bob") is Ownership.OTHER
    assert index.ownership("r-bob", "bob") is Ownership.UNKNOWN
    with DecisionLog(tmp_path, flush_interval_s=0.01) as log:  # written after the index first read
        log.record({"request_id": "r-bob", "key_id": "bob", "status": 200})
    (tmp_path / "loaded").mkdir()
    for file in tmp_path.glob("decisions-*.parquet"):  # the routing_decisions asset moves what it loaded
        file.rename(tmp_path / "loaded" / file.name)
    assert index.ownership("r-bob", "bob") is Ownership.OWN and index.ownership("r-bob", "alice") is Ownership.OTHER
    assert OwnerIndex(tmp_path).ownership("r-alice", "alice") is Ownership.OWN  # a restarted gateway's index


def test_feedback_files_keep_every_rating_in_the_contracts_schema(tmp_path):
    [first] = parse_feedback({"request_id": "r1", "score": 0.5})
    [second] = parse_feedback({"request_id": "r1", "thumbs": "up"})
    with FeedbackLog(tmp_path, flush_interval_s=0.01) as log:
        assert log.record_all([feedback_record(first, "alice"), feedback_record(second, "alice")])
        log.record(feedback_record(first, None))
        log.record({"feedback_id": "x", "request_id": "r1", "score": 2.0})  # invalid: dropped alone
    frame = read_feedback(tmp_path)
    assert frame.schema == pl.Schema(SCHEMA) and log.dropped == 1
    assert frame["score"].to_list() == [0.5, 1.0, 0.5] and frame["key_id"].to_list() == ["alice", "alice", None]
    assert frame["feedback_id"].n_unique() == 3 and set(frame["source"]) == {"api"}
    assert all(f.name.startswith(f"feedback-{os.uname().nodename}-{os.getpid()}-") for f in feedback_files(tmp_path))


def test_record_all_queues_all_or_none(tmp_path):
    with FeedbackLog(tmp_path, flush_interval_s=3600, max_queue=3) as log:
        [rating] = parse_feedback({"request_id": "r", "score": 1})
        assert not log.record_all([feedback_record(rating, "k") for _ in range(4)]) and log.depth == 0
        assert log.record_all([feedback_record(rating, "k") for _ in range(3)]) and log.depth == 3
    assert read_feedback(tmp_path).height == 3 and log.dropped == 4


def test_the_sample_follows_the_rate_and_the_id_alone():
    ids = [f"{i:016x}" for i in range(20_000)]
    assert not any(sampled(i, 0.0) for i in ids) and all(sampled(i, 1.0) for i in ids)
    share = sum(sampled(i, 0.05) for i in ids) / len(ids)
    assert 0.04 < share < 0.06
    assert [sampled(i, 0.3) for i in ids[:200]] == [sampled(i, 0.3) for i in ids[:200]]  # same id, same choice
    assert {i for i in ids if sampled(i, 0.05)} <= {i for i in ids if sampled(i, 0.2)}  # nested samples


STREAM = (
    b": uniroute {}\n\n"
    b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
    b'data: {"choices": [{"delta": {"content": "The answer"}}]}\n\n'
    b'data: {"choices": [{"delta": {"content": " is (B)."}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 3}}\n\n'
    b"data: [DONE]\n\n"
)


def test_traffic_files_hold_the_text_taken_out_by_the_writer(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which is it?"}]
    base = {"key_id": "alice", "router_version": "1", "chosen_llm": "cheap", "prompt": "Which is it?"}
    with TrafficLog(tmp_path, flush_interval_s=0.01) as log:
        plain = {"choices": [{"message": {"role": "assistant", "content": "It is (A)."}}]}
        log.record({**base, "request_id": "p", "messages": messages, "answer": plain, "cluster_weights": [0.5, 0.5]})
        log.record({**base, "request_id": "s", "messages": messages, "answer": STREAM, "at": datetime.now(UTC)})
    frame = read_traffic(tmp_path).sort("request_id")
    assert frame.schema == pl.Schema(TRAFFIC_SCHEMA) and frame["request_id"].to_list() == ["p", "s"]
    assert frame["answer"].to_list() == ["It is (A).", "The answer is (B)."]
    assert json.loads(frame["messages"][0]) == messages and frame["cluster_weights"][0].to_list() == [0.5, 0.5]
    assert [f.name[:8] for f in traffic_files(tmp_path)] == ["traffic-"]
    assert answer_text({"choices": []}) is None and answer_text(b"data: [DONE]\n\n") is None
    deep = b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n"  # an upstream's: skipped, never a RecursionError
    assert answer_text(STREAM + deep) == "The answer is (B)."


def test_a_key_opts_out_of_sampling_with_store_false():
    entry = {"id": "sam", "sha256": "0" * 64}
    assert parse_entry(entry, "e").policy.store and not parse_entry({**entry, "store": False}, "e").policy.store
    with pytest.raises(ValueError, match="field store='no': expected true or false"):
        parse_entry({**entry, "store": "no"}, "e")
