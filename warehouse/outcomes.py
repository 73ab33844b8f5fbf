"""What the pipeline learns from traffic: the judge's verdicts on sampled requests (``traffic_judgements``), the
judge's spend (``judge_spend``: each call's worst case reserved before it and settled after, under a USD/day cap),
the outcome of each rated routed request (:func:`read_traffic_outcomes`: feedback wins over the judge) and the online
evaluation's cells per router version (``online_evaluation_cells``).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime

import duckdb
import polars as pl

from warehouse._tables import WarehouseInputError, _prepare, _query, _where, _write
from warehouse.responses import _naive_utc

__all__ = [
    "insert_traffic_judgements",
    "judge_spend_on",
    "read_judge_spend",
    "read_online_evaluation",
    "read_traffic_judgements",
    "read_traffic_outcomes",
    "read_unjudged_samples",
    "read_version_decisions",
    "replace_online_evaluation",
    "reserve_judge_spend",
    "settle_judge_spend",
    "utc_day",
]

_OUTCOMES = """
    WITH feedback AS (
        SELECT request_id, score FROM traffic_feedback
        QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY rated_at DESC, feedback_id DESC) = 1
    ), judged AS (
        SELECT request_id, score FROM traffic_judgements
        QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY judged_at DESC, judge, grader_version) = 1
    )
    SELECT d.request_id, d.decided_at, d.router_version, d.embedder_id, d.chosen_llm, d.cluster_weights,
        coalesce(f.score, j.score) AS score,
        CASE WHEN f.score IS NOT NULL THEN 'feedback' ELSE 'judge' END AS source,
        f.score AS feedback_score, j.score AS judge_score
    FROM routing_decisions d LEFT JOIN feedback f USING (request_id) LEFT JOIN judged j USING (request_id)
    WHERE (f.score IS NOT NULL OR j.score IS NOT NULL) AND {where}
    ORDER BY d.decided_at, d.request_id
"""


def read_traffic_outcomes(con: duckdb.DuckDBPyConnection, router_version: str | None = None) -> pl.DataFrame:
    """One row per rated routed request (of ``router_version`` only, when given), oldest first: ``request_id,
    decided_at, router_version, embedder_id, chosen_llm, cluster_weights, score`` (in [0, 1]), ``source``
    ("feedback" when the request has a rating: its latest stands; else "judge": the latest verdict), and both
    scores as ``feedback_score`` and ``judge_score`` (null where there is none)."""
    where, params = _where({"d.router_version = ?": router_version})
    return _query(con, _OUTCOMES.format(where=where), params)


def read_version_decisions(con: duckdb.DuckDBPyConnection, router_version: str) -> pl.DataFrame:
    """The stored decisions of one router version, oldest first."""
    sql = "SELECT * FROM routing_decisions WHERE router_version = ? ORDER BY decided_at, request_id"
    return _query(con, sql, [router_version])


def read_unjudged_samples(con: duckdb.DuckDBPyConnection, judge: str, grader_version: str) -> pl.DataFrame:
    """Sampled requests with an answer that ``judge`` has not judged with ``grader_version`` yet, oldest first."""
    sql = """
        SELECT s.* FROM traffic_samples s
        WHERE s.answer IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM traffic_judgements j
            WHERE j.request_id = s.request_id AND j.judge = ? AND j.grader_version = ?)
        ORDER BY s.sampled_at, s.request_id
    """
    return _query(con, sql, [judge, grader_version])


def insert_traffic_judgements(con: duckdb.DuckDBPyConnection, judgements: pl.DataFrame) -> int:
    """Store verdicts (``request_id, judge, grader_version, score, judged_by, cost_usd, cached``); a request already
    judged by that judge and grader version keeps its verdict. Returns rows newly stored."""
    return _write(con, "traffic_judgements", judgements, "ON CONFLICT DO NOTHING", stamp="judged_at")


def read_traffic_judgements(con: duckdb.DuckDBPyConnection, request_id: str | None = None) -> pl.DataFrame:
    """Every stored verdict (of ``request_id`` only, when given), oldest first."""
    where, params = _where({"request_id = ?": request_id})
    return _query(con, f"SELECT * FROM traffic_judgements WHERE {where} ORDER BY judged_at, request_id", params)


def utc_day(now: datetime | None = None) -> date:
    """The UTC date of ``now`` (aware, or naive UTC; default the current time): the judge cap's day."""
    return _naive_utc(now or datetime.now(UTC)).date()


def judge_spend_on(con: duckdb.DuckDBPyConnection, day: date | None = None) -> float:
    """USD the judges spent on the UTC ``day`` (default today): settled calls at their cost, calls in flight and
    failed ones at their reserved worst case."""
    sql = "SELECT coalesce(sum(coalesce(cost_usd, reserved_usd)), 0) AS usd FROM judge_spend WHERE day = ?"
    return float(_query(con, sql, [day or utc_day()])["usd"].item())


def read_judge_spend(con: duckdb.DuckDBPyConnection, day: date | None = None) -> pl.DataFrame:
    """The judges' calls (of the UTC ``day`` only, when given), oldest first."""
    where, params = ("day = ?", [day]) if day is not None else ("TRUE", [])
    return _query(con, f"SELECT * FROM judge_spend WHERE {where} ORDER BY reserved_at, spend_id", params)


#: DuckDB runs the transactions of one process's connections side by side (appends never conflict), so two
#: reservations racing there would each see the other's day total without it: they take turns. Across processes
#: the file's lock already lets one writer in at a time.
_RESERVING = threading.Lock()

_RESERVE = """
    INSERT INTO judge_spend (spend_id, judge, request_id, day, reserved_usd, status, reserved_at)
    SELECT spend_id, judge, request_id, ?, reserved_usd, 'reserved', ? FROM (
        SELECT *, sum(reserved_usd) OVER (ORDER BY position) AS running FROM _reserve
    ) WHERE running + (
        SELECT coalesce(sum(coalesce(cost_usd, reserved_usd)), 0) FROM judge_spend WHERE day = ?
    ) <= ?
    RETURNING spend_id, request_id
"""


def reserve_judge_spend(
    con: duckdb.DuckDBPyConnection,
    judge: str,
    calls: pl.DataFrame,
    usd_per_day: float,
    now: datetime | None = None,
) -> pl.DataFrame:
    """Reserve the worst case of the judge ``calls`` (``request_id, reserved_usd``, in order) under the cap of
    ``usd_per_day`` for the UTC day of ``now``: the longest prefix whose worst cases, added to what that day already
    spent or reserved, stay within the cap, in one statement (so another reservation cannot slip in between).
    Returns the reserved calls (``spend_id, request_id``, in order); the caller makes only those calls and settles
    each (:func:`settle_judge_spend`)."""
    if isinstance(usd_per_day, bool) or not isinstance(usd_per_day, int | float) or not math.isfinite(usd_per_day):
        raise WarehouseInputError("judge_spend", "usd_per_day", usd_per_day, "must be a finite number >= 0")
    if usd_per_day < 0:
        raise WarehouseInputError("judge_spend", "usd_per_day", usd_per_day, "must be a finite number >= 0")
    worst = calls.get_column("reserved_usd").cast(pl.Float64)
    if (bad := worst.filter(worst.is_null() | ~worst.is_between(0, 1e300))).len():
        raise WarehouseInputError("judge_spend", "reserved_usd", bad[0], "must be finite and >= 0")
    at = _naive_utc(now or datetime.now(UTC))
    frame = pl.DataFrame(
        {
            "spend_id": [uuid.uuid4().hex for _ in range(calls.height)],
            "judge": [judge] * calls.height,
            "request_id": calls["request_id"].cast(pl.String),
            "reserved_usd": worst,
            "position": range(calls.height),
        },
        schema_overrides={"judge": pl.String, "position": pl.Int64},
    )
    con.register("_reserve", frame)
    try:
        with _RESERVING:
            rows = con.execute(_RESERVE, [at.date(), at, at.date(), float(usd_per_day)]).fetchall()
        reserved = pl.DataFrame(rows, schema={"spend_id": pl.String, "request_id": pl.String}, orient="row")
    finally:
        con.unregister("_reserve")
    order = frame.select("spend_id", "position")
    return reserved.join(order, on="spend_id").sort("position").select("spend_id", "request_id")


def settle_judge_spend(con: duckdb.DuckDBPyConnection, settled: pl.DataFrame) -> int:
    """Record what reserved calls cost (``spend_id, cost_usd, status``: "paid", or "failed" to keep the reserved
    worst case, since what a failed call was billed is unknown). Returns rows settled."""
    if settled.height == 0:
        return 0
    bad = settled.filter(~pl.col("status").is_in(["paid", "failed"]))
    if bad.height:
        raise WarehouseInputError("judge_spend", "status", bad["status"][0], "must be 'paid' or 'failed'")
    frame = settled.select("spend_id", pl.col("cost_usd").cast(pl.Float64), "status")
    costs = frame.filter(pl.col("status") == "paid")["cost_usd"]
    if (wrong := costs.filter(costs.is_null() | ~costs.is_between(0, 1e300))).len():
        raise WarehouseInputError("judge_spend", "cost_usd", wrong[0], "must be finite and >= 0")
    con.register("_settled", frame)
    try:
        sql = """
            UPDATE judge_spend SET status = s.status, settled_at = ?,
                cost_usd = CASE WHEN s.status = 'paid' THEN s.cost_usd ELSE judge_spend.reserved_usd END
            FROM _settled s WHERE judge_spend.spend_id = s.spend_id AND judge_spend.status = 'reserved'
        """
        return con.execute(sql, [_naive_utc(datetime.now(UTC))]).fetchall()[0][0]
    finally:
        con.unregister("_settled")


def replace_online_evaluation(con: duckdb.DuckDBPyConnection, router_version: str, cells: pl.DataFrame) -> int:
    """Store the online evaluation's cells of ``router_version`` (``llm, cluster, count, observed_error,
    predicted_error, difference, se, z, alarm, message``; none: it has no rated traffic), replacing every cell
    stored before, in one transaction. Returns rows stored."""
    cells = cells.with_columns(pl.lit(router_version, dtype=pl.String).alias("router_version"))
    prepared = _prepare("online_evaluation_cells", cells)
    prepared = prepared.with_columns(evaluated_at=pl.lit(_naive_utc(datetime.now(UTC))))
    con.register("_cells", prepared)
    con.begin()
    try:
        con.execute("DELETE FROM online_evaluation_cells")
        names = ", ".join(prepared.columns)
        con.execute(f"INSERT INTO online_evaluation_cells ({names}) SELECT {names} FROM _cells")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister("_cells")
    return prepared.height


def read_online_evaluation(con: duckdb.DuckDBPyConnection, llms: Sequence[str] | None = None) -> pl.DataFrame:
    """The latest online evaluation's cells (one router version's), of ``llms`` only when given, by LLM and
    cluster."""
    where, params = _where({"list_contains(?, llm)": llms})
    return _query(con, f"SELECT * FROM online_evaluation_cells WHERE {where} ORDER BY llm, cluster", params)
