"""Collect without holding the warehouse: stage answers in durable files as they arrive, merge them in a short step.

DuckDB lets one process at a time write the warehouse, and a collection waits on its endpoint for most of its run.
So a profiling run can be split into steps that hold the warehouse only briefly:

1. ``archive_replaced_answers(con, models, refresh_before)`` (:mod:`profiling.collector`): stale answers move to
   the archive and their pairs become pending. A short write.
2. :func:`plan_collection`: the pairs to ask, against the warehouse *and* the unmerged staged files. A short read.
3. :func:`collect_to_staging`: ask them, each batch written to its own Parquet file as it arrives. No warehouse
   connection at all: any number of these may run at once, for any models.
4. :func:`merge_staging`: each unmerged file's answers and failures into the warehouse, idempotently (up to
   :data:`MERGE_BATCH` files per transaction, which also records each file in ``staging_merges``), then the files
   move to ``merged/``. The only writer of staged answers; a short write.

:func:`collect` runs the four in order: the one way to collect, for ``uniroute collect`` and library callers alike
(the profiling asset runs the same steps as Dagster ops).

Layout under the staging location (a directory, or an ``s3://bucket/prefix``: :mod:`profiling.staging_location`)::

    model=<model, %-quoted>/<UTC stamp>-<run_id>-<n>.parquet          staged, not merged yet
    model=<model, %-quoted>/.<name>.tmp                                being written, locally (never read)
    merged/model=<model, %-quoted>/<UTC stamp>-<run_id>-<n>.parquet   merged (kept, never read again)

A file holds one batch of one model: its answers (``kind = 'answer'``, the columns of
:data:`profiling.collector.ANSWER_SCHEMA`) and its failures (``kind = 'failure'``, with ``attempts`` and
``last_error_class``), and ``staged_at`` (naive UTC), the time the batch was written: the answers' ``collected_at``.
It is written under a temporary name, fsynced, then renamed into place (and its directory fsynced), so a file that
has its name is whole: a run killed at any point loses at most the batch it was writing (its temporary file, which
the next merge of that model deletes once it is an hour old), and a re-run planned with :func:`plan_collection`
never asks (never pays for) a staged answer again.

``staging_merges``, not the move to ``merged/``, says what is merged: the move only keeps the listing of unmerged
files short. That is what lets the staging location be shared storage: a path every run's machine mounts (the
temporary name and rename are atomic on a POSIX filesystem; NFS renames are atomic within a directory too) or an
S3-compatible bucket through ``pyarrow.fs.S3FileSystem``. On S3 an object appears whole once uploaded, so there is
no temporary name; the "move" is a copy and a delete, and a crash between them leaves a copy that
``staging_merges`` recognises. Every function here takes a path, an ``s3://`` URL or a
:class:`~profiling.staging_location.StagingLocation`, and names files by ``PurePath`` objects under its root
(``Path`` objects locally).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import TypeVar

import polars as pl

import warehouse as wh
from profiling.batches import check_batching
from profiling.collector import (
    ANSWER_SCHEMA,
    FAILURE_SCHEMA,
    CollectionReport,
    RetryPolicy,
    active_llms,
    archive_replaced_answers,
    new_run_id,
    run_collection,
)
from profiling.onboarding import DEFAULT_ONBOARDING_FRACTION, plan_onboarding
from profiling.staging_location import StagingLocation

__all__ = [
    "STAGED_SCHEMA",
    "MergeReport",
    "StagingLocation",
    "StagingSink",
    "collect",
    "collect_to_staging",
    "merge_staging",
    "plan_collection",
    "plan_run",
    "staged_files",
    "staged_pairs",
]

log = logging.getLogger(__name__)

#: The columns of a staged file: a row is an answer or a failure (``kind``), of one model.
STAGED_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String,
    **ANSWER_SCHEMA,
    "attempts": pl.Int32,
    "last_error_class": pl.String,
    "staged_at": pl.Datetime("us"),
}
MERGED = "merged"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PAIR_COLUMNS = ["model", "prompt_id", "request_hash", "base_url", "model_id", "staged_at"]
#: Where a staging location may be given: a path, an ``s3://bucket/prefix`` URL, or resolved already.
Where = str | os.PathLike[str] | StagingLocation


def _model_dir(model: str) -> str:
    """The directory of ``model``'s files: ``model=`` and the name %-quoted (no separators, never ``merged``)."""
    return "model=" + urllib.parse.quote(model, safe="")


class StagingSink:
    """A collector sink (:class:`profiling.collector.Sink`) that writes each batch durably to its own Parquet file
    per model under ``directory`` (a path or ``s3://`` URL; see the module's docstring), named after ``run_id`` so
    that runs at once never collide. Needs no warehouse connection."""

    def __init__(self, directory: Where, run_id: str) -> None:
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"run_id={run_id!r}: must be 1-128 letters, digits, '.', '_' or '-', not starting with .")
        self.location, self.run_id = StagingLocation.of(directory), run_id
        self._files = 0

    def write(self, answers: pl.DataFrame, failures: pl.DataFrame) -> int:
        """Stage one batch: a file per model; returns the answers staged."""
        staged_at = datetime.now(UTC).replace(tzinfo=None)
        rows = pl.concat(
            [
                answers.with_columns(kind=pl.lit("answer")),
                failures.with_columns(kind=pl.lit("failure")),
            ],
            how="diagonal_relaxed",
        )
        if rows.height == 0:
            return 0
        rows = rows.with_columns(staged_at=pl.lit(staged_at, dtype=pl.Datetime("us")))
        rows = rows.select(
            pl.col(n).cast(d) if n in rows.columns else pl.lit(None, dtype=d).alias(n) for n, d in STAGED_SCHEMA.items()
        )
        stamp = staged_at.strftime("%Y%m%dT%H%M%S%fZ")
        for (model,), part in sorted(rows.partition_by("model", as_dict=True, maintain_order=True).items()):
            self._files += 1
            name = f"{stamp}-{self.run_id}-{self._files:06d}.parquet"
            self.location.write(part, self.location.root / _model_dir(model) / name)
        return answers.height


def staged_files(directory: Where, models: Sequence[str] | None = None) -> list[PurePath]:
    """The unmerged staged files under ``directory`` (of ``models``, default all), oldest first; files being
    written (temporary names) are never listed. A missing directory holds none."""
    location = StagingLocation.of(directory)
    files = [
        f
        for d in _model_folders(location, models)
        for f in location.entries(d, directories=False)
        if f.name.endswith(".parquet") and not f.name.startswith(".")
    ]
    return sorted(files, key=lambda f: (f.name, f.parent.name))


def _model_folders(location: StagingLocation, models: Sequence[str] | None) -> list[PurePath]:
    """The folders of ``models``' files (default: every model's there is)."""
    if models is None:
        return [d for d in location.entries(location.root, directories=True) if d.name.startswith("model=")]
    return [location.root / _model_dir(m) for m in models]


def staged_pairs(directory: Where, models: Sequence[str] | None = None) -> pl.DataFrame:
    """The answered pairs staged under ``directory`` and not merged yet, of ``models`` (default all): model,
    prompt_id, request_hash, base_url, model_id (what the answer answered, and who) and collected_at. Reads only
    those columns of each file. A pair may be listed more than once (answered in several runs)."""
    location = StagingLocation.of(directory)

    def answered(path: PurePath) -> pl.DataFrame:
        try:
            frame = location.read(path, [*_PAIR_COLUMNS, "kind"])
        except FileNotFoundError:  # merged meanwhile: moved aside, with the same content
            frame = location.read(location.root / MERGED / location.relative(path), [*_PAIR_COLUMNS, "kind"])
        return frame.filter(pl.col("kind") == "answer").drop("kind")

    frames = _read_each(answered, staged_files(location, models))
    schema = {n: STAGED_SCHEMA[n] for n in _PAIR_COLUMNS}
    if not frames:
        return pl.DataFrame(schema=schema).rename({"staged_at": "collected_at"})
    return pl.concat(frames).select(pl.col(n).cast(d) for n, d in schema.items()).rename({"staged_at": "collected_at"})


def plan_collection(
    warehouse: wh.Opener,
    models: Sequence[str],
    splits: Sequence[str] = ("validation",),
    staging_dir: Where | None = None,
    refresh_before: datetime | None = None,
) -> pl.DataFrame:
    """The pairs a collection of ``models`` on ``splits`` should ask: the warehouse's pending pairs
    (:func:`warehouse.pending_pairs`; run ``archive_replaced_answers`` first) less those with a current staged
    answer in ``staging_dir`` (:func:`staged_pairs`). A staged answer counts as a stored one does: to the prompt's
    current request (``request_hash``), from the LLM's current endpoint and model id, and collected at or after
    ``refresh_before`` (UTC) when given; any other is stale and its pair is asked again. Only reads the warehouse
    (a connection, or a function opening one: :data:`warehouse.Opener`).

    The staged files are read before the warehouse is opened (an object store may take a while), so a merge
    between the two reads cannot hide an answer.
    """
    staged = staged_pairs(staging_dir, models) if staging_dir is not None else None
    with wh.opened(warehouse) as con:
        return wh.pending_pairs(con, list(models), splits, staged=staged, staged_since=refresh_before)


def plan_run(
    warehouse: wh.Opener,
    models: Sequence[str] | None,
    splits: Sequence[str],
    staging_dir: Where,
    refresh_before: datetime | None = None,
    log_progress: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A profiling run's first step: the catalog rows of ``models`` (default every active LLM), the answers a
    re-profiling replaces archived (``archive_replaced_answers``), and the pairs to ask (:func:`plan_collection`)."""
    with wh.opened(warehouse) as con:
        llms = active_llms(con, models)
        archive_replaced_answers(con, llms["name"].to_list(), refresh_before, log_progress)
    return llms, plan_collection(warehouse, llms["name"].to_list(), splits, staging_dir, refresh_before)


def collect_to_staging(
    pairs: pl.DataFrame, llms: pl.DataFrame, staging_dir: Where, run_id: str | None = None, **options
) -> CollectionReport:
    """Ask ``pairs`` (:func:`plan_collection`) of their LLMs in ``llms`` (catalog rows:
    ``profiling.collector.active_llms``) and stage every batch under ``staging_dir`` as it arrives
    (:class:`StagingSink`); no warehouse connection. ``run_id`` (default a new one) names the answers and the files;
    ``options`` are :func:`profiling.collector.collect_pairs`' (policy, batch_size, seed, progress, log_progress,
    flush_interval_s). The report's ``stored`` counts the answers staged; :func:`merge_staging` stores them."""
    run_id = run_id or new_run_id()
    return run_collection(StagingSink(staging_dir, run_id), pairs, llms, run_id=run_id, **options)


@dataclass
class MergeReport:
    """What :func:`merge_staging` did: ``files`` merged now, ``already_merged`` files found recorded already (moved
    aside, nothing added), and the rows the merged files held."""

    files: int = 0
    already_merged: int = 0
    answers: int = 0
    answers_stored: int = 0
    failures: int = 0
    failures_recorded: int = 0
    #: Temporary files of writes killed midway, deleted (:meth:`StagingLocation.remove_stale_temporaries`).
    temporaries_removed: int = 0

    def add(self, counts: dict[str, int] | None) -> None:
        """Count one file's merge (None: it was merged before)."""
        if counts is None:
            self.already_merged += 1
            return
        self.files += 1
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)


#: Staged files merged per transaction: one commit for many small files keeps the merge (holding the warehouse) short.
MERGE_BATCH = 64
#: Staged files read at once (before the warehouse is opened).
READ_THREADS = 8
T = TypeVar("T")


def merge_staging(
    warehouse: wh.Opener,
    directory: Where,
    models: Sequence[str] | None = None,
    log_progress: Callable[[str], None] | None = None,
) -> MergeReport:
    """Merge every unmerged staged file under ``directory`` (a path or ``s3://`` URL; of ``models``, default all)
    into the warehouse, then move it to ``<directory>/merged/``. The only writer of staged answers to the warehouse.

    Files are merged :data:`MERGE_BATCH` at a time in one transaction (:func:`warehouse.merge_staged_files`): their
    answers, their failures and a row naming each file in ``staging_merges``. So a merge repeated adds nothing, and a
    merge that crashed after a commit and before the moves finds the files recorded and only moves them: failures'
    attempts are never counted twice, answers never duplicated. Files are merged newest first, so where runs
    answered the same pair (a stale answer, then a current one) the newest answer is the one stored; the others stay
    in their files under ``merged/``. A file the warehouse refuses is named in the error; the files before it are
    merged. ``warehouse`` is a connection or a function opening one (:data:`warehouse.Opener`): the files are read
    before it is opened and moved aside after it is closed. Temporary files that writes killed midway left in these
    models' folders are deleted first (:meth:`StagingLocation.remove_stale_temporaries`).
    """
    root = StagingLocation.of(directory)
    report = MergeReport(temporaries_removed=root.remove_stale_temporaries(_model_folders(root, models)))
    if report.temporaries_removed:
        log.info("removed %d temporary files of staging writes killed midway", report.temporaries_removed)
    paths = list(reversed(staged_files(root, models)))
    staged = _read_each(lambda path: _read_staged(root, path), paths)
    done: list[PurePath] = []
    try:
        with wh.opened(warehouse) as con:
            for start in range(0, len(paths), MERGE_BATCH):
                batch = slice(start, start + MERGE_BATCH)
                try:
                    results = wh.merge_staged_files(con, staged[batch])
                except wh.WarehouseInputError:
                    results = []
                    for path, file in zip(paths[batch], staged[batch], strict=True):  # the files before a bad one merge
                        try:
                            results.append(wh.merge_staged(con, *file))
                        except wh.WarehouseInputError as exc:
                            done.extend(paths[start : start + len(results)])
                            raise wh.WarehouseInputError("staging", "file", str(path), str(exc)) from exc
                for counts in results:
                    report.add(counts)
                done.extend(paths[batch])
    finally:
        _move_aside(root, done)
    if report.files or report.already_merged:
        message = (
            f"merged {report.files} staged files ({report.answers_stored} answers stored of {report.answers}, "
            f"{report.failures_recorded} failures recorded); {report.already_merged} merged before, moved aside"
        )
        log.info(message)
        if log_progress:
            log_progress(message)
    return report


def _read_each(read: Callable[[PurePath], T], paths: Sequence[PurePath]) -> list[T]:
    """``read`` of each path, in order, a few at a time (an object store answers each in tens of milliseconds)."""
    if len(paths) < 2:
        return [read(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(paths)), thread_name_prefix="uniroute-staging") as pool:
        return list(pool.map(read, paths))


def _read_staged(root: StagingLocation, path: PurePath) -> tuple[str, pl.DataFrame, pl.DataFrame]:
    """A staged file as :func:`warehouse.merge_staged` takes it: its name under ``root``, answers, failures."""
    try:
        rows = root.read(path)
    except FileNotFoundError:  # another merge moved it aside meanwhile, with the same content (and recorded it)
        rows = root.read(root.root / MERGED / root.relative(path))
    answers = rows.filter(pl.col("kind") == "answer").select(*ANSWER_SCHEMA, pl.col("staged_at").alias("collected_at"))
    failures = rows.filter(pl.col("kind") == "failure").select(
        *FAILURE_SCHEMA, pl.col("staged_at").alias("last_failed_at")
    )
    return root.relative(path), answers, failures


def _move_aside(root: StagingLocation, paths: Sequence[PurePath]) -> None:
    """Move merged files to ``<root>/merged/`` under the same relative paths (replacing copies there)."""
    root.move([(path, root.root / MERGED / root.relative(path)) for path in paths])


def collect(
    warehouse: wh.Opener,
    models: Sequence[str] | None = None,
    splits: Sequence[str] = ("validation",),
    policy: RetryPolicy | None = None,
    batch_size: int = 512,
    progress: bool = True,
    log_progress: Callable[[str], None] | None = None,
    refresh_before: datetime | None = None,
    flush_interval_s: float = 2.0,
    staging_dir: Where | None = None,
    fraction: float = DEFAULT_ONBOARDING_FRACTION,
    budget_usd: float | None = None,
) -> CollectionReport:
    """Collect every missing response of ``models`` (default: all active catalog LLMs) on ``splits``: a profiling
    run's steps in order, as ``uniroute collect`` and the profiling asset run them.

    1. :func:`plan_run`: stale answers archived (``refresh_before``, UTC, re-profiles: answers collected before it
       too), then the pairs to ask, against the warehouse and the unmerged staged answers (a killed run's answers
       are never asked again).
    2. :func:`collect_to_staging`: ask them, staging every ``batch_size`` answers (or ``flush_interval_s`` after the
       first) under ``staging_dir``, without the warehouse.
    3. :func:`merge_staging`: every unmerged staged file of ``models`` into the warehouse (the report's ``merged``).

    ``warehouse`` is a connection or a function opening one (:data:`warehouse.Opener`), each step opening it for a
    short while. ``staging_dir`` defaults to :func:`warehouse.default_staging_path` of the warehouse's file.
    ``fraction`` and ``budget_usd`` (USD per LLM) plan a new LLM's onboarding
    (:func:`profiling.onboarding.plan_onboarding`: a new LLM first the pipeline's default share of its validation
    prompts; 1.0 and None: every pending pair is asked).
    """
    check_batching(batch_size, flush_interval_s)
    if staging_dir is None:
        staging_dir = _default_staging(warehouse)
    llms, pairs = plan_run(warehouse, models, splits, staging_dir, refresh_before, log_progress)
    plan = plan_onboarding(warehouse, llms, pairs, fraction, budget_usd, log_progress)
    options = {"batch_size": batch_size, "flush_interval_s": flush_interval_s, "progress": progress}
    report = collect_to_staging(
        plan.pairs, llms, staging_dir, policy=policy, log_progress=log_progress, budget=plan.budget, **options
    )
    report.merged = merge_staging(warehouse, staging_dir, llms["name"].to_list())
    settle_budget_stops(warehouse, report)
    return report


def settle_budget_stops(warehouse: wh.Opener, report: CollectionReport) -> None:
    """Once merged: each LLM whose collection stopped at its budget keeps the partial profile it has
    (``warehouse.settle_onboarding_target``)."""
    if report.not_asked:
        with wh.opened(warehouse) as con:
            for model in report.not_asked:
                wh.settle_onboarding_target(con, model)


def _default_staging(warehouse: wh.Opener) -> PurePath | str:
    """:func:`warehouse.default_staging_path` of the warehouse's file; an in-memory warehouse has none."""
    with wh.opened(warehouse) as con:
        path = wh.database_path(con)
    if path is None:
        raise ValueError("staging_dir=None: an in-memory warehouse has no default staging location; pass one")
    return wh.default_staging_path(path)
