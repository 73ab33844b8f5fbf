"""Collecting to staging files (no warehouse connection) and merging them: a real replay server on 127.0.0.1, real
DuckDB files, a staging run SIGKILLed in its own process, and an S3-compatible location (moto's real S3 server)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import warehouse as wh
from profiling import staging, staging_location
from profiling.collector import RetryPolicy, active_llms, archive_replaced_answers, collect_pairs
from profiling.importers import import_mmlu_pro
from profiling.staging import (
    STAGED_SCHEMA,
    StagingSink,
    collect,
    collect_to_staging,
    merge_staging,
    plan_collection,
    staged_files,
    staged_pairs,
)
from profiling.staging_location import StagingLocation
from replay import ReplayConfig, ReplayServer

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, timeout_s=2.0)
ALL_SPLITS = ["train", "validation", "test"]
SPLITS = ["validation", "test"]
#: Models of the fixture that answer every prompt.
COMPLETE = ["bio-pro", "cheap", "generalist", "history-pro", "math-pro"]


def _catalog(base_url: str, models: list[str], concurrency: int = 8, names: list[str] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": names or models,
            "base_url": base_url,
            "model_id": models,
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 2.0,
            "max_concurrency": concurrency,
            "active": True,
        }
    )


def _ok_counts(server: ReplayServer) -> Counter:
    """Answers served (paid, for a real endpoint) per (model id, prompt_id), logged as requests arrive."""
    return Counter(
        {(r["model"], r["prompt_id"]): r["count"] for r in server.request_log.rows() if r["outcome"] == "ok"}
    )


def _stored(con) -> pl.DataFrame:
    stored = wh.read_responses(con)
    assert not stored.select("model", "prompt_id").is_duplicated().any()
    return stored


def _stage(con, stage_dir, models: list[str], splits=("validation",), **kwargs):
    """Plan against warehouse and staging, then collect to staging (the warehouse is not touched while asking)."""
    pairs = plan_collection(con, models, splits, stage_dir)
    return pairs, collect_to_staging(pairs, active_llms(con, models), stage_dir, policy=FAST, progress=False, **kwargs)


def test_staging_writes_each_batch_durably_as_answers_arrive(con, mmlu_like_dir, tmp_path):
    stage_dir, seen = tmp_path / "staging", []
    with ReplayServer(mmlu_like_dir, ReplayConfig(latency_ms=20)) as server:
        # a catalog name with ":" and "@" ("org:model@version"; never "/") gets a directory of its own, quoted
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap", "math-pro"], 2, names=["org:cheap@v1", "math-pro"]))
        pairs = plan_collection(con, ["org:cheap@v1", "math-pro"], ALL_SPLITS, stage_dir)
        llms = active_llms(con, ["org:cheap@v1", "math-pro"])

        def written(_line: str) -> None:  # after every batch written, on the event loop
            seen.append((staged_pairs(stage_dir).height, sum(_ok_counts(server).values())))

        report = collect_to_staging(
            pairs, llms, stage_dir, run_id="r1", progress=False, log_progress=written, flush_interval_s=0.1
        )
    assert report.run_id == "r1" and report.stored == pairs.height == 240 and report.failed == 0
    rows_staged, paid = seen[0]
    assert 0 < rows_staged < pairs.height and paid < pairs.height  # staged while the rest was still being asked
    assert len(seen) >= 5 and [s[0] for s in seen] == sorted(s[0] for s in seen)
    assert {f.parent.name for f in staged_files(stage_dir)} == {"model=org%3Acheap%40v1", "model=math-pro"}
    assert not [f for f in stage_dir.rglob("*") if f.name.startswith(".")]  # no temporary file left
    one = pl.read_parquet(staged_files(stage_dir)[0])
    assert one.schema == pl.Schema(STAGED_SCHEMA) and one["model"].n_unique() == 1 and (one["run_id"] == "r1").all()
    staged = staged_pairs(stage_dir)
    assert staged.height == 240 and not staged.select("model", "prompt_id").is_duplicated().any()
    assert set(staged.columns) >= {"model", "prompt_id", "request_hash", "collected_at"}
    assert staged["collected_at"].is_not_null().all() and staged["request_hash"].is_not_null().all()
    assert wh.read_responses(con).height == 0  # nothing reached the warehouse: only the merge writes it
    assert plan_collection(con, ["org:cheap@v1", "math-pro"], ALL_SPLITS, stage_dir).height == 0


#: A staging run in a process of its own, the way a run outside the warehouse's pool does it: no warehouse at all.
_STAGING_RUN = """
import sys
import polars as pl
from profiling.collector import RetryPolicy
from profiling.staging import collect_to_staging
pairs, llms = pl.read_parquet(sys.argv[1]), pl.read_parquet(sys.argv[2])
policy = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, timeout_s=5.0)
collect_to_staging(pairs, llms, sys.argv[3], run_id=sys.argv[4], policy=policy, progress=False, flush_interval_s=0.2)
"""


def test_a_killed_staging_run_then_a_rerun_pays_nothing_twice_and_merges_one_row_per_pair(con, mmlu_like_dir, tmp_path):
    stage_dir = tmp_path / "staging"
    per_model, latency_s = 2, 0.05  # 5 models x 2 in flight / 50 ms: ~200 answers/s, 600 pairs in ~3 s
    with ReplayServer(mmlu_like_dir, ReplayConfig(latency_ms=latency_s * 1000)) as server:
        wh.upsert_llms(con, _catalog(server.base_url, COMPLETE, per_model))
        pairs = plan_collection(con, COMPLETE, ALL_SPLITS, stage_dir)
        n_pairs = pairs.height
        pairs.write_parquet(tmp_path / "pairs.parquet")
        active_llms(con, COMPLETE).write_parquet(tmp_path / "llms.parquet")
        command = [sys.executable, "-c", _STAGING_RUN, str(tmp_path / "pairs.parquet"), str(tmp_path / "llms.parquet")]
        with open(tmp_path / "run.log", "w") as output:  # the warehouse stays open here: the run never needs it
            proc = subprocess.Popen([*command, str(stage_dir), "killed"], stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while sum(_ok_counts(server).values()) < n_pairs // 3 or len(staged_files(stage_dir)) < 3:
                assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the staging run staged nothing within 60 s"
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait()
        paid_killed = _ok_counts(server)
        staged_before = set(staged_pairs(stage_dir).select("model", "prompt_id").iter_rows())
        assert 0 < len(staged_before) < n_pairs

        # resumed: planned against warehouse and staging, asked, staged, merged
        rest = plan_collection(con, COMPLETE, ALL_SPLITS, stage_dir)
        assert not set(rest.select("model", "prompt_id").iter_rows()) & staged_before
        assert rest.height == n_pairs - len(staged_before)
        wh.upsert_llms(con, _catalog(server.base_url, COMPLETE, 16))  # the rest, quickly
        report = collect_to_staging(rest, active_llms(con, COMPLETE), stage_dir, policy=FAST, progress=False)
        paid = _ok_counts(server)
    assert report.stored == rest.height and report.failed == 0
    asked_again = {pair for pair in paid - paid_killed if pair in staged_before}
    assert not asked_again  # no staged answer was paid for twice
    lost = set(paid_killed) - staged_before  # paid in the killed run, never staged (in flight, or not written yet)
    assert sum(paid.values()) == n_pairs + len(lost)
    assert len(lost) <= 200 * (0.2 + 0.5) + len(COMPLETE) * per_model  # the last interval's, and those in flight

    merged = merge_staging(con, stage_dir)
    stored = _stored(con)
    assert stored.height == n_pairs == merged.answers_stored == merged.answers
    assert merged.files == wh.read_staging_merges(con).height and staged_files(stage_dir) == []
    assert set(stored["run_id"]) == {"killed", report.run_id}
    assert plan_collection(con, COMPLETE, ALL_SPLITS, stage_dir).height == 0


def test_a_merge_repeated_or_crashed_before_the_move_adds_nothing(con, mmlu_like_dir, tmp_path, monkeypatch):
    stage_dir = tmp_path / "staging"
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["last", "cheap", "math-pro"]))
        _stage(con, stage_dir, ["last", "cheap"], ["validation", "test"], batch_size=10)
        first = merge_staging(con, stage_dir)
        responses, failures = _stored(con), wh.read_failures(con)
        assert failures.height > 0 and (failures["attempts"] == 1).all()  # "last" lacks some answers: 404, once
        assert first.files > 2 and first.answers_stored == responses.height and first.already_merged == 0

        again = merge_staging(con, stage_dir)  # nothing left to merge
        assert (again.files, again.already_merged, again.answers) == (0, 0, 0)

        # a crash after a file's commit and before its move: the file is back in place; it is recognised, moved aside
        merged_dir = stage_dir / staging.MERGED
        for merged_file in merged_dir.rglob("*.parquet"):
            shutil.copy(merged_file, stage_dir / merged_file.relative_to(merged_dir))
        replaced = merge_staging(con, stage_dir)
        assert (replaced.files, replaced.already_merged) == (0, first.files) and staged_files(stage_dir) == []
        assert _stored(con).equals(responses) and wh.read_failures(con).equals(failures)  # attempts not doubled

        # the same crash for real: the moves fail after the batch's commit; the next merge only moves those files
        _stage(con, stage_dir, ["math-pro"], ["validation", "test"], batch_size=10)
        n_files = len(staged_files(stage_dir))

        def crash(root, path):
            raise OSError("killed before the move")

        with monkeypatch.context() as patch:
            patch.setattr(staging, "_move_aside", crash)
            with pytest.raises(OSError, match="killed before the move"):
                merge_staging(con, stage_dir)
        assert len(staged_files(stage_dir)) == n_files and wh.read_staging_merges(con).height == first.files + n_files
        resumed = merge_staging(con, stage_dir)
        assert (resumed.files, resumed.already_merged) == (0, n_files) and staged_files(stage_dir) == []

        # a failure asked again in another run adds that run's attempts, once
        _stage(con, stage_dir, ["last"], ["validation", "test"])
        merge_staging(con, stage_dir)
    stored = _stored(con)
    assert stored.height == responses.height + 48 and stored.filter(pl.col("model") == "math-pro").height == 48
    assert (wh.read_failures(con)["attempts"] == 2).all()


def test_pending_respects_staged_answers_and_stale_request_hashes(con, mmlu_like_dir, tmp_path):
    stage_dir = tmp_path / "staging"
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        pairs, report = _stage(con, stage_dir, ["cheap"])
        assert report.stored == pairs.height == 12
        assert plan_collection(con, ["cheap"], staging_dir=stage_dir).height == 0
        assert wh.pending_pairs(con, ["cheap"]).height == 12  # the warehouse alone still lacks them

        # the template changed for three prompts: their staged answers answered an older request
        changed = pairs["prompt_id"].head(3).to_list()
        con.execute("UPDATE prompts SET request_hash = 'v2' WHERE list_contains(?, prompt_id)", [changed]).fetchall()
        planned = plan_collection(con, ["cheap"], staging_dir=stage_dir)
        assert planned["prompt_id"].to_list() == changed and (planned["request_hash"] == "v2").all()
        # re-profiling: staged answers from before the cutoff do not count, later ones do
        assert plan_collection(con, ["cheap"], staging_dir=stage_dir, refresh_before=datetime.now(UTC)).height == 12
        earlier = datetime.now(UTC) - timedelta(hours=1)
        assert plan_collection(con, ["cheap"], staging_dir=stage_dir, refresh_before=earlier).height == 3

        # asked again, staged again: the merge stores the newest answer, to the current request
        _, again = _stage(con, stage_dir, ["cheap"])
        assert again.stored == 3
        merge_staging(con, stage_dir)
        stored = _stored(con)
        assert stored.height == 12
        assert stored.filter(pl.col("prompt_id").is_in(changed))["request_hash"].to_list() == ["v2"] * 3
        assert archive_replaced_answers(con, ["cheap"]) == 0  # nothing stale was stored: nothing to ask a third time

        # another endpoint behind the name: staged answers from the old one do not count
        wh.upsert_llms(con, _catalog(server.base_url, ["math-pro"]))
        _stage(con, stage_dir, ["math-pro"])
        wh.upsert_llms(con, _catalog(server.base_url + "/", ["math-pro"]))
        assert plan_collection(con, ["math-pro"], staging_dir=stage_dir).height == 12
    assert sum(_ok_counts(server).values()) == 12 + 3 + 12


def test_archiving_is_a_step_of_its_own(con, mmlu_like_dir, tmp_path):
    stage_dir = tmp_path / "staging"
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        assert collect(con, ["cheap"], policy=FAST, progress=False).stored == 12
        wh.upsert_llms(con, _catalog(server.base_url + "/", ["cheap"]))  # the endpoint changed
        # planning and collecting to staging never archive: the stale answers stay until the archiving step
        assert plan_collection(con, ["cheap"], staging_dir=stage_dir).height == 0
        assert wh.pending_counts(con)["pending"].to_list() == [12]
        assert archive_replaced_answers(con, ["cheap"]) == 12
        assert archive_replaced_answers(con, ["cheap"]) == 0
        _, report = _stage(con, stage_dir, ["cheap"])
        assert report.stored == 12 and wh.read_responses(con).height == 0
        assert merge_staging(con, stage_dir).answers_stored == 12
        assert archive_replaced_answers(con, ["cheap"]) == 0
        # collect() (the library's one-process collection) runs the steps in order: archive, plan, ask
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        assert collect(con, ["cheap"], policy=FAST, progress=False).stored == 12
    with pytest.raises(ValueError, match="model='nope'"):
        archive_replaced_answers(con, ["nope"])
    assert con.sql("SELECT count(*) FROM responses_archive").fetchall() == [(24,)]


def test_a_duckdb_connection_is_still_a_sink(con, mmlu_like_dir):
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        pairs = wh.pending_pairs(con, ["cheap"])
        report = asyncio.run(collect_pairs(con, pairs, active_llms(con, ["cheap"]), FAST, progress=False))
    assert report.stored == 12 and wh.read_responses(con).height == 12


def test_a_run_id_that_cannot_name_a_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"run_id='\.\./x'"):
        staging.StagingSink(tmp_path, "../x")


def test_a_bad_staged_file_is_named_and_the_files_merged_before_it_stay_merged(con, mmlu_like_dir, tmp_path):
    stage_dir = tmp_path / "staging"
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        _stage(con, stage_dir, ["cheap"], ["validation", "test"], batch_size=5)
    files = staged_files(stage_dir)  # oldest first; merged newest first
    assert len(files) >= 4
    bad = files[1]
    rows = pl.read_parquet(bad, hive_partitioning=False)
    rows.with_columns(prompt_tokens=pl.lit(-1, dtype=rows["prompt_tokens"].dtype)).write_parquet(bad)
    with pytest.raises(wh.WarehouseInputError, match=bad.name):
        merge_staging(con, stage_dir)
    assert staged_files(stage_dir) == files[:2]  # the bad file and the one older than it wait
    newer = pl.concat([pl.read_parquet(stage_dir / staging.MERGED / f.relative_to(stage_dir)) for f in files[2:]])
    assert set(_stored(con)["prompt_id"]) == set(newer["prompt_id"])
    assert wh.read_staging_merges(con).height == len(files) - 2


# ---- an S3-compatible staging location: moto's real S3 server on 127.0.0.1 ----------------------------------
def _nothing_local(root: Path) -> None:
    """No path was made of the URL (``Path('s3://b/p')`` is ``s3:/b/p``): nothing named ``s3:`` anywhere under root."""
    assert not [p for p in root.rglob("*") if p.name.startswith("s3")]


def test_collecting_stages_each_batch_as_an_object_and_planning_skips_those_pairs(
    con, mmlu_like_dir, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    url = s3_bucket.url("runs/staging")
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap", "math-pro"], names=["org:cheap@v1", "math-pro"]))
        pairs = plan_collection(con, ["org:cheap@v1", "math-pro"], SPLITS, url)
        llms = active_llms(con, ["org:cheap@v1", "math-pro"])
        report = collect_to_staging(pairs, llms, url, run_id="r1", policy=FAST, progress=False, batch_size=16)
    assert report.stored == pairs.height == 96 and report.failed == 0
    keys = s3_bucket.list_keys()
    assert len(keys) >= 6 and all(k.startswith("runs/staging/model=") and k.endswith(".parquet") for k in keys)
    assert {k.split("/")[2] for k in keys} == {"model=org%3Acheap%40v1", "model=math-pro"}  # no temporary objects
    files = staged_files(url)
    assert [f"{f.parent.parent}/{f.parent.name}/{f.name}" for f in files] == sorted(
        (f"{s3_bucket.name}/{k}" for k in keys), key=lambda k: (k.rsplit("/", 1)[1], k.split("/")[3])
    )
    one = StagingLocation.of(url).read(files[0])
    assert one.schema == pl.Schema(STAGED_SCHEMA) and (one["run_id"] == "r1").all()
    staged = staged_pairs(url)
    assert staged.height == 96 and not staged.select("model", "prompt_id").is_duplicated().any()
    assert plan_collection(con, ["org:cheap@v1", "math-pro"], SPLITS, url).height == 0  # staged on S3: not asked again
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
        asked = _ok_counts(server)
    assert sum(asked.values()) == pairs.height == 48 and set(asked.values()) == {1}  # each pair paid for once
    merged = merge_staging(con, url)
    assert merged.answers_stored == 48 and wh.count_answers(con, "cheap")["responses"] == 48
    assert all(k.startswith("staging/merged/model=cheap/") for k in s3_bucket.list_keys())
    _nothing_local(tmp_path)


def test_planning_and_merging_read_the_staged_objects_before_they_open_the_warehouse(
    mmlu_like_dir, s3_bucket, tmp_path
):
    # an object store answers each read in tens of milliseconds: other runs' merges must not wait on those reads
    path, url, events = tmp_path / "w.duckdb", s3_bucket.url("staging"), []
    with wh.connect(path) as con, ReplayServer(mmlu_like_dir) as server:
        import_mmlu_pro(con, mmlu_like_dir, seed=0)
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        pairs = plan_collection(con, ["cheap"], SPLITS, url)
        collect_to_staging(pairs, active_llms(con, ["cheap"]), url, policy=FAST, progress=False, batch_size=10)

    class LoggedReads(StagingLocation):
        def read(self, path, columns=None):
            events.append("read")
            return super().read(path, columns)

    def opener():
        events.append("open")
        return wh.connect(path)

    plain = StagingLocation.of(url)
    location = LoggedReads(plain.fs, plain.root, plain.url)
    n_files = len(staged_files(location))
    assert plan_collection(opener, ["cheap"], SPLITS, location).height == 0
    assert events == ["read"] * n_files + ["open"]
    events.clear()
    assert merge_staging(opener, location).files == n_files > 2
    assert events == ["read"] * n_files + ["open"] and staged_files(location) == []


@pytest.mark.parametrize("store", ["local", "s3"])
def test_two_merges_of_the_same_files_at_once_add_them_once_and_neither_fails(mmlu_like_dir, tmp_path, request, store):
    # the files are read before the warehouse is opened: another merge may take and move them meanwhile
    path = tmp_path / "w.duckdb"
    where = request.getfixturevalue("s3_bucket").url("staging") if store == "s3" else tmp_path / "staging"
    with wh.connect(path) as con, ReplayServer(mmlu_like_dir) as server:
        import_mmlu_pro(con, mmlu_like_dir, seed=0)
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap"]))
        pairs = plan_collection(con, ["cheap"], SPLITS, where)
        collect_to_staging(pairs, active_llms(con, ["cheap"]), where, policy=FAST, progress=False, batch_size=10)
    n_files, others = len(staged_files(where)), []

    def opener_after_another_merge():
        others.append(merge_staging(lambda: wh.connect(path), where))  # it wins the lock first
        return wh.connect(path)

    late = merge_staging(opener_after_another_merge, where)
    assert others[0].files == n_files > 2 and (late.files, late.already_merged) == (0, n_files)
    assert staged_files(where) == []
    with wh.connect(path) as con:
        assert wh.count_answers(con, "cheap")["responses"] == pairs.height
        assert wh.read_staging_merges(con).height == n_files


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


def test_a_merge_deletes_the_temporary_files_of_writes_killed_midway_and_keeps_those_being_written(
    con, mmlu_like_dir, tmp_path
):
    stage_dir = tmp_path / "staging"
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url, ["cheap", "math-pro"]))
        _stage(con, stage_dir, ["cheap", "math-pro"])
    staged = staged_files(stage_dir, ["cheap"])
    folder, other = staged[0].parent, staged_files(stage_dir, ["math-pro"])[0].parent
    killed, writing = folder / ".killed.parquet.tmp", folder / ".now.parquet.tmp"
    killed_other = other / ".x.parquet.tmp"
    for path in (killed, writing, killed_other):
        path.write_bytes(b"PAR1")  # half a Parquet file
    long_ago = time.time() - staging_location.STALE_TEMPORARY_S - 60
    for path in (killed, killed_other):
        os.utime(path, (long_ago, long_ago))

    report = merge_staging(con, stage_dir, ["cheap"])
    assert report.files == len(staged) and report.temporaries_removed == 1
    assert not killed.exists() and writing.exists()  # a write of a run staging right now keeps its file
    assert killed_other.exists()  # a model not merged keeps its folder as it is
    assert merge_staging(con, stage_dir).temporaries_removed == 1 and not killed_other.exists()
