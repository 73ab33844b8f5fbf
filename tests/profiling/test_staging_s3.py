"""Staging on an S3-compatible URL: moto's real S3 server on 127.0.0.1, a real replay server and DuckDB files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import warehouse as wh
from profiling.collector import RetryPolicy, active_llms
from profiling.replay_server import ReplayServer
from profiling.staging import (
    STAGED_SCHEMA,
    StagingSink,
    collect_to_staging,
    merge_staging,
    plan_collection,
    staged_files,
    staged_pairs,
)
from profiling.staging_location import StagingLocation

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, timeout_s=2.0)
SPLITS = ["validation", "test"]


def _catalog(base_url: str, models: list[str], names: list[str] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": names or models,
            "base_url": base_url,
            "model_id": models,
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 2.0,
            "max_concurrency": 4,
            "active": True,
        }
    )


def _asked(server: ReplayServer) -> Counter:
    """Answers served per (model id, prompt_id)."""
    return Counter(
        {(r["model"], r["prompt_id"]): r["count"] for r in server.request_log.rows() if r["outcome"] == "ok"}
    )


def _nothing_local(root: Path) -> None:
    """No path was made of the URL (``Path('s3://b/p')`` is ``s3:/b/p``): nothing named ``s3:`` anywhere under root."""
    assert not [p for p in root.rglob("*") if p.name.startswith("s3")]


def test_collecting_stages_each_batch_as_an_object_and_planning_skips_those_pairs(
    con, mmlu_like_dir, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    url = s3_bucket.url("runs/staging")
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap", "math-pro"], names=["org/cheap", "math-pro"]))
        pairs = plan_collection(con, ["org/cheap", "math-pro"], SPLITS, url)
        llms = active_llms(con, ["org/cheap", "math-pro"])
        report = collect_to_staging(pairs, llms, url, run_id="r1", policy=FAST, progress=False, batch_size=16)
    assert report.stored == pairs.height == 96 and report.failed == 0
    keys = s3_bucket.list_keys()
    assert len(keys) >= 6 and all(k.startswith("runs/staging/model=") and k.endswith(".parquet") for k in keys)
    assert {k.split("/")[2] for k in keys} == {"model=org%2Fcheap", "model=math-pro"}  # no temporary objects
    files = staged_files(url)
    assert [f"{f.parent.parent}/{f.parent.name}/{f.name}" for f in files] == sorted(
        (f"{s3_bucket.name}/{k}" for k in keys), key=lambda k: (k.rsplit("/", 1)[1], k.split("/")[3])
    )
    one = StagingLocation.of(url).read(files[0])
    assert one.schema == pl.Schema(STAGED_SCHEMA) and (one["run_id"] == "r1").all()
    staged = staged_pairs(url)
    assert staged.height == 96 and not staged.select("model", "prompt_id").is_duplicated().any()
    assert plan_collection(con, ["org/cheap", "math-pro"], SPLITS, url).height == 0  # staged on S3: not asked again
    assert wh.read_responses(con).height == 0  # only the merge writes the warehouse
    _nothing_local(tmp_path)


def test_a_rerun_planned_against_s3_asks_only_what_is_not_staged_there(
    con, mmlu_like_dir, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    url = s3_bucket.url("staging")
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        pairs = plan_collection(con, ["cheap"], SPLITS, url)
        llms = active_llms(con, ["cheap"])
        collect_to_staging(pairs.head(20), llms, url, policy=FAST, progress=False)  # a run killed after 20 answers
        assert s3_bucket.list_keys("staging/model=cheap/")  # staged in the bucket
        rest = plan_collection(con, ["cheap"], SPLITS, url)
        assert rest.height == pairs.height - 20 and set(rest["prompt_id"]).isdisjoint(pairs.head(20)["prompt_id"])
        collect_to_staging(rest, llms, url, policy=FAST, progress=False)
        asked = _asked(server)
    assert sum(asked.values()) == pairs.height == 48 and set(asked.values()) == {1}  # each pair paid for once
    merged = merge_staging(con, url)
    assert merged.answers_stored == 48 and wh.count_answers(con, "cheap")["responses"] == 48
    assert all(k.startswith("staging/merged/model=cheap/") for k in s3_bucket.list_keys())
    _nothing_local(tmp_path)


def test_a_merge_from_s3_is_idempotent_and_moves_the_objects_to_merged(con, mmlu_like_dir, s3_bucket):
    url = s3_bucket.url("staging")
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["last", "cheap"]))
        pairs = plan_collection(con, ["last", "cheap"], SPLITS, url)
        collect_to_staging(pairs, active_llms(con, ["last", "cheap"]), url, policy=FAST, progress=False, batch_size=10)
    staged = s3_bucket.list_keys()
    first = merge_staging(con, url)
    responses, failures = wh.read_responses(con), wh.read_failures(con)
    assert first.files == len(staged) > 2 and first.answers_stored == responses.height > 0 and failures.height > 0
    assert s3_bucket.list_keys() == sorted(k.replace("staging/", "staging/merged/", 1) for k in staged)
    recorded = set(wh.read_staging_merges(con)["file"])
    assert recorded == {k.removeprefix("staging/") for k in staged}  # named under the prefix, as locally

    again = merge_staging(con, url)  # nothing left to merge
    assert (again.files, again.already_merged, again.answers) == (0, 0, 0)

    # a crash between a move's copy and its delete: the objects are back in place; recognised, moved aside again
    for key in staged:
        s3_bucket.copy(key.replace("staging/", "staging/merged/", 1), key)
    replayed = merge_staging(con, url)
    assert (replayed.files, replayed.already_merged) == (0, len(staged)) and staged_files(url) == []
    assert wh.read_responses(con).equals(responses) and wh.read_failures(con).equals(failures)  # nothing added
    assert s3_bucket.list_keys() == sorted(k.replace("staging/", "staging/merged/", 1) for k in staged)


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/prefix", "user info"),
        (f"s3://{SECRET}@bucket/prefix?region=us-east-1", "user info"),
        (f"s3://bucket/prefix?endpoint_override=http://AKIAEXAMPLE:{SECRET}@127.0.0.1:9", "endpoint_override"),
        (f"s3://bucket/prefix?secret_key={SECRET}&region=us-east-1", "secret_key"),
        (f"gs://AKIAEXAMPLE:{SECRET}@bucket/prefix", "unknown scheme 'gs'"),
        ("s3:///prefix", "no bucket"),
        ("s3://?region=us-east-1", "no bucket"),
    ],
)
def test_a_bad_or_credentialed_url_is_refused_in_one_line_without_its_secret(con, tmp_path, url, says):
    calls = [
        lambda: plan_collection(con, ["cheap"], SPLITS, url),
        lambda: collect_to_staging(pl.DataFrame(), pl.DataFrame(), url),
        lambda: merge_staging(con, url),
        lambda: staged_pairs(url),
        lambda: StagingSink(url, "r1"),
        lambda: StagingLocation.of(url),
    ]
    for call in calls:
        with pytest.raises(ValueError) as caught:
            call()
        message = str(caught.value)
        assert says in message and "staging location" in message and "\n" not in message
        assert SECRET not in message and "AKIAEXAMPLE" not in message
        assert caught.value.__cause__ is None and (
            caught.value.__context__ is None or caught.value.__suppress_context__
        )
    assert wh.read_staging_merges(con).height == 0
    _nothing_local(tmp_path)


def test_the_staging_location_is_shown_without_its_options(s3_bucket):
    location = StagingLocation.of(s3_bucket.url("a/b/"))
    assert str(location) == f"s3://{s3_bucket.name}/a/b" and not location.local
    assert StagingLocation.of(location) is location
    assert wh.staging_path(s3_bucket.url("a")) == s3_bucket.url("a") and wh.staging_path("a/b") == Path("a/b")
