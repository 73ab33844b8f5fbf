"""What comes back from traffic, in the warehouse: the ratings of routed requests and the opt-in sample of traffic,
loaded from the files the gateway writes."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
from datetime import UTC, datetime

import dagster as dg

import warehouse as wh
from assets.decisions import GROUP
from assets.resources import WarehouseResource
from serving import feedback, traffic
from serving.recordlog import move_to_loaded

#: How long sampled traffic (user text) is kept unless configured otherwise.
DEFAULT_RETENTION_DAYS = 30.0


class FeedbackConfig(dg.Config):
    """Where the gateway's feedback files are (empty: ``<warehouse dir>/feedback``), and whether files once loaded
    are moved to its ``loaded/`` folder (kept there; the next run reads only new files)."""

    directory: str = ""
    move_loaded: bool = True


class TrafficConfig(dg.Config):
    """Where the gateway's sampled-traffic files are (empty: ``<warehouse dir>/traffic``), whether files once loaded
    move to its ``loaded/`` folder, and how many days sampled requests (their text) are kept: older ones are deleted
    from the warehouse and from the files, in the folder and in ``loaded/``."""

    directory: str = ""
    move_loaded: bool = True
    retention_days: float = DEFAULT_RETENTION_DAYS


@dg.asset(group_name=GROUP, pool="duckdb")
def traffic_feedback(config: FeedbackConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every rating of a routed request (the gateway's ``POST /v1/feedback``; ``uniroute import-feedback`` adds
    more), kept as history in ``traffic_feedback``: the latest rating of a request stands. Loading again stores
    nothing new."""
    directory = config.directory or str(feedback.default_directory())
    files = feedback.feedback_files(directory)
    frame = feedback.read_feedback_files(files)
    with warehouse.connect() as con:
        loaded = wh.insert_traffic_feedback(con, frame)
        total = wh.count_traffic_feedback(con)
        latest = wh.read_latest_feedback(con)
        unknown = wh.unknown_request_ids(con, latest["request_id"])
    moved = move_to_loaded(files) if config.move_loaded else 0
    return dg.MaterializeResult(
        metadata={
            "rows_loaded": loaded,
            "ratings_total": total,
            "requests_rated": latest.height,
            "mean_latest_score": dg.FloatMetadataValue(latest["score"].mean() if latest.height else None),
            "requests_without_decision": len(unknown),
            "files": len(files),
            "files_moved_to_loaded": moved,
            "directory": directory,
        }
    )


@dg.asset(group_name=GROUP, pool="duckdb")
def traffic_samples(config: TrafficConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The opt-in sample of traffic (``traffic.sample_rate``): STORED USER TEXT (prompt, messages, answer) of
    sampled requests in ``traffic_samples``, one row per request; sampled requests older than ``retention_days``
    are deleted from the warehouse and from the gateway's files, so their text really goes away."""
    directory = config.directory or str(traffic.default_directory())
    files = traffic.traffic_files(directory)
    frame = traffic.read_traffic_files(files)
    now = datetime.now(UTC)
    cutoff = wh.retention_cutoff(config.retention_days, now)  # a bad retention is refused before anything is loaded
    with warehouse.connect() as con:
        loaded = wh.insert_traffic_samples(con, frame)
        expired = wh.delete_traffic_older_than(con, config.retention_days, now)
        total = wh.count_traffic_samples(con)
    moved = move_to_loaded(files) if config.move_loaded else 0
    files_deleted, files_rewritten = traffic.expire_traffic_files(directory, cutoff)
    return dg.MaterializeResult(
        metadata={
            "stored_user_text": f"prompts, messages and answers of sampled requests, kept {config.retention_days:g} "
            "days",
            "rows_loaded": loaded,
            "rows_total": total,
            "retention_days": config.retention_days,
            "rows_deleted_past_retention": expired,
            "files": len(files),
            "files_moved_to_loaded": moved,
            "files_deleted_past_retention": files_deleted,
            "files_rewritten_past_retention": files_rewritten,
            "directory": directory,
        }
    )
