"""``responses`` (insert-only: an answer already stored is never overwritten, so re-running a collection never
re-pays for it), what is pending, the archives a re-profiling moves answers into, what answers cost, and
``collection_failures``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import polars as pl

from warehouse._tables import _COLUMNS, WarehouseInputError, _prepare, _query, _where, _write

#: An answer from an endpoint or model id other than the catalog's (``r``: responses, ``l``: llms).
_STALE = "(r.base_url IS NOT NULL AND (r.base_url <> l.base_url OR r.model_id <> l.model_id))"
#: An answer to another request than the prompt's current one (template, messages or parameters changed).
_STALE_REQUEST = "(r.request_hash IS NOT NULL AND p.request_hash IS NOT NULL AND r.request_hash <> p.request_hash)"
#: Whether LLM ``l`` can be asked prompt ``p``: it has an endpoint and the dataset is collectable.
_COLLECTABLE = (
    "(l.base_url IS NOT NULL AND coalesce((SELECT d.collectable FROM datasets d WHERE d.name = p.dataset), true))"
)
#: Prompts ``p`` expected of LLM ``l``: collectable ones, and those of any dataset it has answers in (imported).
_EXPECTED = (
    f"({_COLLECTABLE} OR EXISTS (SELECT 1 FROM responses r2 JOIN prompts p2 USING (prompt_id) "
    "WHERE r2.model = l.name AND p2.dataset = p.dataset))"
)


def insert_responses(con: duckdb.DuckDBPyConnection, responses: pl.DataFrame) -> int:
    """Store new responses; pairs already stored are left untouched. Clears their recorded failures.

    ``source`` defaults to ``"collected"``. Returns the number of responses newly stored.
    """
    if isinstance(responses, pl.DataFrame) and "source" not in responses.columns:
        responses = responses.with_columns(pl.lit("collected").alias("source"))
    return _write(
        con,
        "responses",
        responses,
        "ON CONFLICT DO NOTHING",
        stamp="collected_at",
        after="DELETE FROM collection_failures f USING _incoming d "
        "WHERE f.model = d.model AND f.prompt_id = d.prompt_id",
    )


def read_responses(
    con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None, splits: Sequence[str] | None = None
) -> pl.DataFrame:
    """Stored responses, optionally of some models and prompt splits."""
    where, params = _where(
        {
            "list_contains(?, r.model)": models,
            "r.prompt_id IN (SELECT prompt_id FROM prompts WHERE list_contains(?, split))": splits,
        }
    )
    return _query(con, f"SELECT r.* FROM responses r WHERE {where} ORDER BY model, prompt_id", params)


#: Answers held outside the warehouse (staged, not merged yet) that :func:`pending_pairs` can take into account.
_STAGED_COLUMNS = {
    "model": pl.String,
    "prompt_id": pl.String,
    "request_hash": pl.String,
    "base_url": pl.String,
    "model_id": pl.String,
    "collected_at": pl.Datetime("us"),
}


def pending_pairs(
    con: duckdb.DuckDBPyConnection,
    models: Sequence[str],
    splits: Sequence[str] = ("validation",),
    staged: pl.DataFrame | None = None,
    staged_since: datetime | None = None,
) -> pl.DataFrame:
    """What to ask: ``models`` x prompts in ``splits`` with no stored response, where the LLM has an endpoint
    and the prompt's dataset is collectable. Columns model, prompt_id, prompt, messages, request_params,
    request_hash, template_version (null where the dataset is not registered).

    ``staged``: answers held elsewhere, not stored yet (model, prompt_id, request_hash, base_url, model_id,
    collected_at: ``profiling.staging.staged_pairs``); a pair with a current one is not pending. A staged answer
    is current as a stored one is (see :func:`pending_counts`): to the prompt's current request, from the LLM's
    current endpoint and model id, and, given ``staged_since`` (naive: UTC), collected at or after it.
    """
    staged_frame = _staged_frame(staged)
    since = _naive_utc(staged_since)
    con.register("_staged", staged_frame)
    try:
        return _query(
            con,
            f"""
            SELECT l.name AS model, p.prompt_id, p.prompt, p.messages, p.request_params, p.request_hash,
                   (SELECT d.template_version FROM datasets d WHERE d.name = p.dataset) AS template_version
            FROM prompts p CROSS JOIN llms l
            WHERE list_contains(?, l.name) AND list_contains(?, p.split) AND {_COLLECTABLE}
              AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.model = l.name AND r.prompt_id = p.prompt_id)
              AND NOT EXISTS (SELECT 1 FROM _staged r WHERE r.model = l.name AND r.prompt_id = p.prompt_id
                              AND NOT {_STALE} AND NOT {_STALE_REQUEST}
                              AND (CAST(? AS TIMESTAMP) IS NULL OR r.collected_at >= CAST(? AS TIMESTAMP)))
            ORDER BY l.name, p.prompt_id
            """,
            [list(models), list(splits), since, since],
        )
    finally:
        con.unregister("_staged")


def _staged_frame(staged: pl.DataFrame | None) -> pl.DataFrame:
    """``staged`` with exactly :data:`_STAGED_COLUMNS` (an empty frame for None); raises naming a missing column."""
    if staged is None:
        return pl.DataFrame(schema=_STAGED_COLUMNS)
    if not isinstance(staged, pl.DataFrame):
        raise WarehouseInputError("staged", "frame", type(staged).__name__, "must be a polars.DataFrame")
    for name in _STAGED_COLUMNS:
        if name not in staged.columns:
            raise WarehouseInputError("staged", name, None, f"missing column (have {staged.columns})")
    try:
        return staged.select(pl.col(n).cast(d, strict=True) for n, d in _STAGED_COLUMNS.items())
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise WarehouseInputError("staged", "frame", str(staged.schema), "has a column of the wrong type") from exc


def _naive_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as naive UTC, the way times are stored (a naive one is UTC already)."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def pending_counts(con: duckdb.DuckDBPyConnection, splits: Sequence[str] = ("validation",)) -> pl.DataFrame:
    """Per active catalog LLM, how many prompts of ``splits`` it can be asked and has no current answer to
    (``model, pending``), > 0 only. An answer from an endpoint or model id it no longer has, or to another
    version of the prompt's request (template), counts as missing; imported answers count as answered."""
    return _query(
        con,
        f"""
        SELECT l.name AS model, count(*) AS pending
        FROM llms l CROSS JOIN prompts p
        WHERE l.active AND list_contains(?, p.split) AND {_COLLECTABLE}
          AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.model = l.name AND r.prompt_id = p.prompt_id
                          AND NOT {_STALE} AND NOT {_STALE_REQUEST})
        GROUP BY l.name ORDER BY l.name
        """,
        [list(splits)],
    )


def expected_count(con: duckdb.DuckDBPyConnection, model: str, splits: Sequence[str] = ("validation",)) -> int:
    """How many prompts of ``splits`` ``model`` should have answered (its coverage's denominator): those it can
    be asked, and those of every dataset it has imported answers in."""
    return con.sql(
        f"SELECT count(*) FROM prompts p JOIN llms l ON l.name = $m WHERE list_contains($s, p.split) AND {_EXPECTED}",
        params={"m": model, "s": list(splits)},
    ).fetchall()[0][0]


_RESPONSE_COLUMNS = [*_COLUMNS["responses"], "collected_at"]
_GRADE_COLUMNS = [*_COLUMNS["grades"], "graded_at"]


def archive_responses(
    con: duckdb.DuckDBPyConnection, models: Sequence[str], collected_before: datetime | None = None
) -> int:
    """Move the answers a re-profiling of ``models`` replaces, with their grades, into ``responses_archive`` and
    ``grades_archive``: collected answers from an endpoint or model id the catalog no longer has, or to another
    version of the prompt's request, and, given ``collected_before`` (naive: UTC), every collected answer before
    it (imported answers are never archived: nothing would ask them again). One transaction; returns the
    responses moved. The pairs become pending again; a second call with the same arguments moves nothing."""
    before = None
    if collected_before is not None:  # naive times are UTC, like the stored ones
        aware = collected_before if collected_before.tzinfo else collected_before.replace(tzinfo=UTC)
        before = aware.astimezone(UTC).replace(tzinfo=None)
    moving = f"""
        SELECT r.model, r.prompt_id,
               CASE WHEN {_STALE} THEN 'endpoint changed' WHEN {_STALE_REQUEST} THEN 'template changed'
                    ELSE 're-profiled' END AS reason
        FROM responses r JOIN llms l ON l.name = r.model JOIN prompts p USING (prompt_id)
        WHERE list_contains(?, r.model) AND r.source = 'collected'
          AND ({_STALE} OR {_STALE_REQUEST} OR r.collected_at < ?)
    """
    return _archive(con, moving, [list(models), before])


def archive_pairs(con: duckdb.DuckDBPyConnection, pairs: pl.DataFrame, reason: str = "re-imported") -> int:
    """Move the stored answers of ``pairs`` (``model, prompt_id``), with their grades, into ``responses_archive``
    and ``grades_archive`` with ``reason``, as :func:`archive_responses` does (one transaction; the pairs become
    unanswered): an import that replaces them keeps what they were. Returns the responses moved."""
    if not isinstance(pairs, pl.DataFrame) or not {"model", "prompt_id"} <= set(pairs.columns):
        raise WarehouseInputError("responses_archive", "pairs", type(pairs).__name__, "needs model and prompt_id")
    con.register("_pairs", pairs.select(pl.col("model", "prompt_id").cast(pl.String)).unique())
    try:
        moving = "SELECT r.model, r.prompt_id, ? AS reason FROM responses r JOIN _pairs USING (model, prompt_id)"
        return _archive(con, moving, [reason])
    finally:
        con.unregister("_pairs")


def _archive(con: duckdb.DuckDBPyConnection, moving: str, params: list) -> int:
    """Move the answers the query ``moving`` lists (model, prompt_id, reason) and their grades into the archives,
    deleting them and their recorded failures, in one transaction; returns the responses moved."""
    archived_at = datetime.now(UTC).replace(tzinfo=None)
    con.begin()
    try:
        moved = _move(con, moving, params, archived_at)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return moved


def _move(con: duckdb.DuckDBPyConnection, moving: str, params: list, archived_at: datetime) -> int:
    """:func:`_archive`'s statements, in the caller's transaction, stamped ``archived_at`` (naive UTC)."""
    names, grades = ", ".join(_RESPONSE_COLUMNS), ", ".join(_GRADE_COLUMNS)
    from_r, from_g = ", ".join(f"r.{c}" for c in _RESPONSE_COLUMNS), ", ".join(f"g.{c}" for c in _GRADE_COLUMNS)
    con.execute(f"CREATE TEMP TABLE _moving AS {moving}", params).fetchall()
    moved = con.execute("SELECT count(*) FROM _moving").fetchall()[0][0]
    for sql in (
        f"INSERT INTO responses_archive ({names}, archived_at, reason) "
        f"SELECT {from_r}, ?, m.reason FROM responses r JOIN _moving m USING (model, prompt_id)",
        f"INSERT INTO grades_archive ({grades}, archived_at) "
        f"SELECT {from_g}, ? FROM grades g JOIN _moving m USING (model, prompt_id)",
    ):
        con.execute(sql, [archived_at]).fetchall()
    for table in ("grades", "responses", "collection_failures"):
        con.execute(
            f"DELETE FROM {table} t USING _moving m WHERE t.model = m.model AND t.prompt_id = m.prompt_id"
        ).fetchall()
    con.execute("DROP TABLE _moving").fetchall()
    return moved


def replace_answers(con: duckdb.DuckDBPyConnection, answers: pl.DataFrame, reason: str, archived_at: datetime) -> int:
    """Store ``answers`` (collected: the columns of ``responses``) in place of the stored answers to their pairs,
    which move with their grades into the archives with ``reason`` at ``archived_at`` (naive: UTC), in one
    transaction: an answer asked again never loses the paid one it replaces. Returns the answers stored."""
    prepared = _prepare("responses", answers.with_columns(pl.lit("collected").alias("source")))
    if prepared.height == 0:
        return 0
    stamp = _naive_utc(archived_at)
    prepared = prepared.with_columns(pl.lit(datetime.now(UTC).replace(tzinfo=None)).alias("collected_at"))
    names = ", ".join(prepared.columns)
    moving = "SELECT r.model, r.prompt_id, ? AS reason FROM responses r JOIN _incoming USING (model, prompt_id)"
    con.register("_incoming", prepared)
    con.begin()
    try:
        _move(con, moving, [reason], stamp)
        con.execute(f"INSERT INTO responses ({names}) SELECT {names} FROM _incoming").fetchall()
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister("_incoming")
    return prepared.height


def read_pair_requests(con: duckdb.DuckDBPyConnection, model: str, prompt_ids: Sequence[str]) -> pl.DataFrame:
    """What asking ``model`` the prompts ``prompt_ids`` again sends, as :func:`pending_pairs` lists a pending pair
    (model, prompt_id, prompt, messages, request_params, request_hash, template_version), answered or not."""
    return _query(
        con,
        """
        SELECT ? AS model, p.prompt_id, p.prompt, p.messages, p.request_params, p.request_hash,
               (SELECT d.template_version FROM datasets d WHERE d.name = p.dataset) AS template_version
        FROM prompts p WHERE list_contains(?, p.prompt_id) ORDER BY p.prompt_id
        """,
        [model, list(prompt_ids)],
    )


def read_archived_outcomes(con: duckdb.DuckDBPyConnection, model: str, splits: Sequence[str]) -> pl.DataFrame:
    """The outcomes (model, prompt_id, score, archived_at) of ``model``'s most recently archived answers on
    ``splits``: its previous profile, empty if it was never re-profiled."""
    return _query(
        con,
        """
        SELECT g.model, g.prompt_id, g.score, g.archived_at FROM grades_archive g JOIN prompts p USING (prompt_id)
        WHERE g.model = ? AND list_contains(?, p.split)
          AND g.archived_at = (SELECT max(archived_at) FROM grades_archive WHERE model = ?)
        ORDER BY g.prompt_id
        """,
        [model, list(splits), model],
    )


def count_answers(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, int]:
    """How many current responses and grades ``model`` has, on every split: ``{"responses": n, "grades": m}``."""
    row = con.sql(
        "SELECT (SELECT count(*) FROM responses WHERE model = $m), (SELECT count(*) FROM grades WHERE model = $m)",
        params={"m": model},
    ).fetchall()[0]
    return {"responses": row[0], "grades": row[1]}


def read_costs(con: duckdb.DuckDBPyConnection, splits: Sequence[str] = ("validation",)) -> pl.DataFrame:
    """Mean realised cost per query (USD) of each LLM's answers on ``splits``: ``model, cost, priced``.

    An answer's cost is what the data measured (``cost_usd``: collected answers are priced from the catalog and
    the tokens used; imported ones keep their per-query USD), else catalog price x tokens where both are known
    (tokens reported, or estimated at import), else the catalog's price per query; ``priced`` is how many answers
    had a cost (``cost`` is null when none had). :func:`read_cost_basis` says which of these it mostly was.
    """
    return _query(
        con,
        f"""
        SELECT model, avg(cost) AS cost, count(cost) AS priced
        FROM ({_ANSWER_COST}) c JOIN prompts p USING (prompt_id)
        WHERE list_contains(?, p.split) GROUP BY model ORDER BY model
        """,
        [list(splits)],
    )


def read_query_costs(
    con: duckdb.DuckDBPyConnection, models: Sequence[str], splits: Sequence[str] = ("test",)
) -> pl.DataFrame:
    """Each answer's cost in USD (``model, prompt_id, cost``; null where unknown), as :func:`read_costs` counts it."""
    return _query(
        con,
        f"SELECT c.model, c.prompt_id, c.cost FROM ({_ANSWER_COST}) c JOIN prompts p USING (prompt_id) "
        "WHERE list_contains(?, c.model) AND list_contains(?, p.split) ORDER BY c.model, c.prompt_id",
        [list(models), list(splits)],
    )


#: How an answer's cost is known, in :data:`_ANSWER_COST`'s order of preference.
COST_BASES = ("measured", "catalog price x tokens", "catalog price x estimated tokens", "price per query")
_TOKEN_PRICED = (
    "r.prompt_tokens IS NOT NULL AND r.completion_tokens IS NOT NULL "
    "AND l.usd_per_mtok_in IS NOT NULL AND l.usd_per_mtok_out IS NOT NULL"
)
#: model, prompt_id, cost and cost_basis of every stored answer: measured USD, else catalog prices per million
#: tokens x its tokens (reported or estimated), else the catalog's price per query; null when none is known.
_ANSWER_COST = f"""
    SELECT r.model, r.prompt_id, coalesce(
            r.cost_usd,
            (r.prompt_tokens * l.usd_per_mtok_in + r.completion_tokens * l.usd_per_mtok_out) / 1e6,
            l.usd_per_query
        ) AS cost,
        CASE WHEN r.cost_usd IS NOT NULL THEN '{COST_BASES[0]}'
             WHEN {_TOKEN_PRICED} AND NOT coalesce(r.tokens_estimated, false) THEN '{COST_BASES[1]}'
             WHEN {_TOKEN_PRICED} THEN '{COST_BASES[2]}'
             WHEN l.usd_per_query IS NOT NULL THEN '{COST_BASES[3]}' END AS cost_basis
    FROM responses r LEFT JOIN llms l ON l.name = r.model
"""


def read_cost_basis(
    con: duckdb.DuckDBPyConnection, models: Sequence[str], splits: Sequence[str] = ("validation",)
) -> pl.DataFrame:
    """How each of ``models``' costs is known (``model, cost_basis``): the basis of most of its answers on
    ``splits``, one of :data:`COST_BASES` (ties: the first in that order); null when none of them has a cost."""
    ranked = ", ".join(f"'{basis}'" for basis in COST_BASES)
    return _query(
        con,
        f"""
        SELECT m.model, b.cost_basis FROM (SELECT unnest(?) AS model) m LEFT JOIN (
            SELECT c.model, c.cost_basis, row_number() OVER (
                PARTITION BY c.model ORDER BY count(*) DESC, list_position([{ranked}], c.cost_basis)) AS rank
            FROM ({_ANSWER_COST}) c JOIN prompts p USING (prompt_id)
            WHERE list_contains(?, c.model) AND list_contains(?, p.split) AND c.cost_basis IS NOT NULL
            GROUP BY c.model, c.cost_basis
        ) b ON b.model = m.model AND b.rank = 1
        ORDER BY m.model
        """,
        [list(models), list(models), list(splits)],
    )


def record_failures(con: duckdb.DuckDBPyConnection, failures: pl.DataFrame) -> int:
    """Record (or add to) failed attempts per pair: model, prompt_id, attempts, last_error_class, run_id."""
    return _write(
        con,
        "collection_failures",
        failures,
        "ON CONFLICT (model, prompt_id) DO UPDATE SET attempts = collection_failures.attempts + excluded.attempts, "
        "last_error_class = excluded.last_error_class, last_failed_at = excluded.last_failed_at, "
        "run_id = excluded.run_id",
        stamp="last_failed_at",
    )


def read_failures(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Pairs whose collection failed and that have no response yet."""
    return _query(con, "SELECT * FROM collection_failures ORDER BY model, prompt_id")
