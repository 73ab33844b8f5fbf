"""Open the warehouse: one DuckDB file, migrated forward when opened for writing; and where this project's files
live (the data home, the warehouse file, the catalog), resolved here and nowhere else."""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from warehouse.schema import MIGRATIONS

__all__ = [
    "Opener",
    "SchemaError",
    "WarehouseCorruptError",
    "connect",
    "connect_read_only",
    "data_home",
    "default_catalog_path",
    "default_pacing_path",
    "default_path",
    "default_staging_path",
    "opened",
    "schema_version",
    "staging_path",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


#: The warehouse as a step that waits on other things takes it: a connection, held throughout, or a function that
#: opens one (e.g. ``WarehouseResource.connect``), called only to read and to write, so that other processes' writes
#: (DuckDB: one writing process at a time) go ahead while the step waits on endpoints, graders or object stores.
Opener = duckdb.DuckDBPyConnection | Callable[[], duckdb.DuckDBPyConnection]


@contextlib.contextmanager
def opened(warehouse: Opener) -> Iterator[duckdb.DuckDBPyConnection]:
    """The connection given (left open), or one opened now and closed after."""
    if isinstance(warehouse, duckdb.DuckDBPyConnection):
        yield warehouse
        return
    with warehouse() as con:
        yield con


class SchemaError(RuntimeError):
    """The database was written by a newer version of this project, or (read-only) needs migrating first."""


class WarehouseCorruptError(RuntimeError):
    """The warehouse file is damaged (DuckDB found a block whose checksum does not match, or no DuckDB header); the
    one-line message names the file and what to do. Raised on opening, before anything is written to it."""

    def __init__(self, path: str | os.PathLike[str], cause: BaseException) -> None:
        self.path = str(path)
        detail = " ".join(str(cause).split())
        detail = detail if len(detail) <= 80 else detail[:77] + "..."
        super().__init__(
            f"warehouse {path} is corrupt ({detail}); nothing was written to it: restore it from a backup "
            "or move it aside"
        )


#: What DuckDB says of a damaged file: a block's checksum, the file header, or metadata it cannot decode.
_CORRUPTION = re.compile(r"Corrupt database file|not a valid DuckDB database file|checksum", re.IGNORECASE)


def _is_corruption(exc: BaseException) -> bool:
    damaged = (duckdb.SerializationException, duckdb.InternalException, duckdb.FatalException)
    return isinstance(exc, damaged) or bool(_CORRUPTION.search(str(exc)))


def data_home() -> Path:
    """``$UNIROUTE_DATA_HOME``, else ``<project>/data``: where everything the project writes goes by default."""
    return Path(os.environ.get("UNIROUTE_DATA_HOME") or PROJECT_ROOT / "data")


def default_path() -> Path:
    """``$UNIROUTE_WAREHOUSE``, else ``<data home>/warehouse.duckdb``."""
    if path := os.environ.get("UNIROUTE_WAREHOUSE"):
        return Path(path)
    return data_home() / "warehouse.duckdb"


def default_catalog_path() -> Path:
    """``$UNIROUTE_CATALOG``, else ``llms.yaml`` in the working directory (the file users edit)."""
    return Path(os.environ.get("UNIROUTE_CATALOG") or "llms.yaml")


def default_staging_path(warehouse: str | os.PathLike[str] | None = None) -> Path | str:
    """``$UNIROUTE_STAGING``, else ``<warehouse file>.staging`` beside it: where profiling runs stage answers until
    they are merged. One staging location per warehouse, since the warehouse's ``staging_merges`` says what is merged.
    A URL (``s3://bucket/prefix``: ``profiling.staging_location``) is returned as given, a path as a ``Path``.
    """
    if path := os.environ.get("UNIROUTE_STAGING"):
        return staging_path(path)
    warehouse = Path(warehouse) if warehouse is not None else default_path()
    return warehouse.with_name(warehouse.name + ".staging")


def database_path(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file of ``con``'s database (None in memory)."""
    rows = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return Path(rows[0][0]) if rows and rows[0][0] else None


def staging_path(where: str | os.PathLike[str]) -> Path | str:
    """A staging location as given: a URL (``scheme://...``) stays a str (a ``Path`` would fold its ``//``), a local
    path becomes a ``Path``. The URL is checked where it is used (``profiling.staging_location.StagingLocation``)."""
    if isinstance(where, str) and _URL.match(where):
        return where
    return Path(where)


def default_pacing_path() -> Path:
    """``$UNIROUTE_PACING``, else ``<data home>/endpoint_pacing.sqlite``: the request pace every run on this machine
    shares per endpoint (a catalog's ``requests_per_minute`` belongs to the endpoint, not to one run)."""
    return Path(os.environ.get("UNIROUTE_PACING") or data_home() / "endpoint_pacing.sqlite")


def connect(
    path: str | os.PathLike[str] | None = None, lock_wait_s: float = 0.0, verify: bool = True
) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the warehouse at ``path`` for writing and apply pending migrations.

    DuckDB lets one process at a time hold a file open for writing: readers use :func:`connect_read_only`. While
    another process holds it, this waits up to ``lock_wait_s`` seconds, trying again every few milliseconds (up to
    100 ms apart), then raises DuckDB's ``IOException`` naming the process that holds it.

    A damaged file raises :class:`WarehouseCorruptError` before anything is written: its header and catalog are
    always read, and with ``verify`` (the default) every stored block of every table too, so that a bad block in the
    middle is found now rather than by whichever later query reads it (DuckDB checks a block's checksum when it
    reads it). That costs about a full scan (a few ms per MB); code that opens the warehouse many times per run
    (Dagster steps, a command's later opens) passes ``verify=False`` and keeps the cheap check (~10 ms).
    """
    path = Path(path) if path is not None else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open_checked(path, lock_wait_s, False, verify)
    try:
        _migrate(con)
    except BaseException:
        con.close()
        raise
    return con


def _open_checked(path: Path, lock_wait_s: float, read_only: bool, verify: bool) -> duckdb.DuckDBPyConnection:
    """:func:`_open_when_free`, then :func:`_probe`; DuckDB's word that the file is damaged becomes
    :class:`WarehouseCorruptError` naming ``path``."""
    try:
        con = _open_when_free(path, lock_wait_s, read_only)
    except duckdb.Error as exc:
        if _is_corruption(exc):
            raise WarehouseCorruptError(path, exc) from None
        raise
    try:
        _probe(con, verify)
    except duckdb.Error as exc:
        con.close()
        if _is_corruption(exc):
            raise WarehouseCorruptError(path, exc) from None
        raise
    except BaseException:
        con.close()
        raise
    return con


def _probe(con: duckdb.DuckDBPyConnection, full: bool) -> None:
    """Read the catalog of tables (and the migrations table); with ``full``, every column of every table, so that
    DuckDB checks each stored block's checksum. Indexes are not read (DuckDB reads them when they are used)."""
    tables = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal"
    ).fetchall()
    _applied_version(con)
    if full and tables:
        # identifiers cannot be bound: the catalog's own names, quoted
        scans = [
            f"SELECT bit_xor(hash(*COLUMNS(*))) FROM {_quoted(schema)}.{_quoted(table)}" for schema, table in tables
        ]
        con.execute(" UNION ALL ".join(scans)).fetchall()


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _open_when_free(path: Path, lock_wait_s: float, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(path)``, trying again while another process holds the file's lock (for ``lock_wait_s``)."""
    deadline = time.monotonic() + lock_wait_s
    delay = 0.005
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "Could not set lock" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))  # jittered: waiters do not retry in step
        delay = min(2 * delay, 0.1)


def connect_read_only(
    path: str | os.PathLike[str] | None = None, lock_wait_s: float = 0.0, verify: bool = True
) -> duckdb.DuckDBPyConnection:
    """Open the existing warehouse at ``path`` for reading only: no migration, no write lock, so any number of
    readers may hold it at once (a process writing it still excludes them, and they it, while open). While a writer
    holds it, this waits up to ``lock_wait_s`` seconds (as :func:`connect` does), then raises DuckDB's
    ``IOException``.

    Raises ``FileNotFoundError`` when there is no warehouse at ``path``, :class:`SchemaError` when its schema
    is not this code's (an older one is migrated by the next writer, e.g. any ``uniroute`` command that writes), and
    :class:`WarehouseCorruptError` when the file is damaged (``verify``: as :func:`connect` checks it).
    """
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"no warehouse at {path}")
    con = _open_checked(path, lock_wait_s, True, verify)
    try:
        current = _applied_version(con)
        if current != len(MIGRATIONS):
            state = "newer than" if current > len(MIGRATIONS) else "older than"
            raise SchemaError(
                f"warehouse {path}: schema version {current} is {state} this code's {len(MIGRATIONS)}"
                + (": upgrade uniroute" if current > len(MIGRATIONS) else ": open it for writing once to migrate")
            )
    except BaseException:
        con.close()
        raise
    return con


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest migration applied to ``con``."""
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0]


def _applied_version(con: duckdb.DuckDBPyConnection) -> int:
    """:func:`schema_version`, or 0 for a file without the migrations table (nothing applied yet)."""
    tables = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    ).fetchall()
    return schema_version(con) if tables[0][0] else 0


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
    ).fetchall()
    current = schema_version(con)
    if current > len(MIGRATIONS):
        raise SchemaError(f"schema version {current} is newer than this code's {len(MIGRATIONS)}: upgrade uniroute")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        con.begin()
        try:
            con.execute(MIGRATIONS[version - 1]).fetchall()
            con.execute("INSERT INTO schema_migrations VALUES (?, now())", [version]).fetchall()
            con.commit()
        except BaseException:
            con.rollback()
            raise
