"""Traffic of the snapshot's champion (router v1) where one LLM got worse on one cluster: decisions and their ratings,
as frames for the warehouse or as the files the gateway writes. Shared by the online-evaluation, schedule and UI
tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

NOW = datetime.now(UTC).replace(microsecond=0)
PREDICTED = 0.25  # every decision's predicted error of its chosen LLM
DEGRADED, CLUSTER = "cheap", 1  # observed error 1.0 there, over ``bad_requests`` requests


def rated_request(llm: str, cluster: int, k: int, score: float, at: datetime = NOW) -> tuple[dict, dict]:
    """One decision of router version 1 (``llm`` chosen in ``cluster`` of ``k``, predicted error PREDICTED) and its
    feedback ``score``."""
    request_id = uuid.uuid4().hex
    decision = {
        "request_id": request_id,
        "at": at,
        "router_version": "1",
        "chosen_llm": llm,
        "status": 200,
        "budget_kind": "none",
        "realised_cost_usd": 0.001,
        "embedder_id": "e",
        "cluster_weights": [1.0 if j == cluster else 0.0 for j in range(k)],
        "ranked_llms": [llm],
        "ranked_predicted_error": [PREDICTED],
        "predicted_error": f'{{"{llm}": {PREDICTED}}}',
    }
    return decision, {"feedback_id": uuid.uuid4().hex, "request_id": request_id, "score": score, "at": at}


def traffic_frames(rated: list[tuple[dict, dict]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`rated_request` pairs as the decisions and feedback frames the warehouse takes."""
    frame = pl.DataFrame([d for d, _ in rated]).with_columns(pl.col("status").cast(pl.Int32))
    return frame, pl.DataFrame([f for _, f in rated]).with_columns(source=pl.lit("api"))


def degraded_traffic(
    llms: list[str], k: int, per_cell: int = 40, bad_requests: int = 100
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decisions of router version 1 and their feedback: each LLM in each of ``k`` clusters observed at its
    prediction (a quarter wrong) over ``per_cell`` requests, except DEGRADED in CLUSTER, always wrong."""
    rated = []
    for llm in llms:
        for cluster in range(k):
            degraded = (llm, cluster) == (DEGRADED, CLUSTER)
            for i in range(bad_requests if degraded else per_cell):
                score = 0.0 if degraded or i % 4 == 0 else 1.0
                rated.append(rated_request(llm, cluster, k, score))
    return traffic_frames(rated)


def champion_shape(tracking_uri: str) -> tuple[list[str], int]:
    """The LLMs and the number of clusters of the ``uniroute`` champion in the registry at ``tracking_uri``."""
    from mlflow.tracking._tracking_service import utils as mlflow_utils

    from serving import registry

    # MLflow caches each run's artifact store by run id: the snapshot's, when this process built it; a copy's runs
    # have the same ids but their own artifacts
    mlflow_utils._artifact_repos_cache.clear()
    registry.configure(tracking_uri)
    router = registry.champion_router("uniroute")
    return list(router.llms_), router.psi_.shape[1]


def write_gateway_files(warehouse: Path, decisions: pl.DataFrame, feedback: pl.DataFrame) -> None:
    """``decisions`` and ``feedback`` written by the gateway's own logs into the folders beside ``warehouse`` where
    the gateway puts them (``decisions/``, ``feedback/``)."""
    from serving.decisions import DecisionLog
    from serving.feedback import FeedbackLog

    with DecisionLog(warehouse.parent / "decisions") as log:
        assert log.record_all(decisions.to_dicts())
    with FeedbackLog(warehouse.parent / "feedback") as log:
        assert log.record_all(feedback.to_dicts())
