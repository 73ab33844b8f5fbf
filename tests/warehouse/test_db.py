"""Opening the warehouse: where its files resolve, and read-only connections that never migrate nor lock out
other readers."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

import warehouse as wh
from tests.conftest import corrupt_warehouse
from warehouse.schema import MIGRATIONS

HOLD_READ_ONLY = "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); "
HOLD_READ_ONLY += "sys.stdin.read()"


def test_paths_resolve_from_the_data_home_unless_set(tmp_path, monkeypatch):
    for name in ("UNIROUTE_DATA_HOME", "UNIROUTE_WAREHOUSE", "UNIROUTE_CATALOG", "UNIROUTE_STAGING", "UNIROUTE_PACING"):
        monkeypatch.delenv(name, raising=False)
    assert wh.data_home() == wh.db.PROJECT_ROOT / "data"
    assert str(wh.default_catalog_path()) == "llms.yaml"
    monkeypatch.setenv("UNIROUTE_DATA_HOME", str(tmp_path))
    assert wh.default_path() == tmp_path / "warehouse.duckdb"
    assert wh.default_staging_path() == tmp_path / "warehouse.duckdb.staging"  # one per warehouse, beside it
    assert wh.default_staging_path(tmp_path / "b.duckdb") == tmp_path / "b.duckdb.staging"
    assert wh.default_pacing_path() == tmp_path / "endpoint_pacing.sqlite"
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "elsewhere.duckdb"))
    monkeypatch.setenv("UNIROUTE_CATALOG", str(tmp_path / "mine.yaml"))
    assert (wh.default_path(), wh.default_catalog_path()) == (tmp_path / "elsewhere.duckdb", tmp_path / "mine.yaml")


def test_read_only_connections_share_the_file_that_a_writer_would_lock(tmp_path):
    path = tmp_path / "w.duckdb"
    wh.connect(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_READ_ONLY, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"  # another process reads the warehouse
        with wh.connect_read_only(path) as con:  # so can we
            assert wh.schema_version(con) == len(MIGRATIONS)
            with pytest.raises(duckdb.Error):  # and nothing is written through it
                con.execute("CREATE TABLE scratch (x INTEGER)")
        with pytest.raises(duckdb.IOException):  # whereas connect() wants the write lock
            wh.connect(path)
    finally:
        holder.communicate("", timeout=30)


HOLD_FOR = "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('open', flush=True); "
HOLD_FOR += "time.sleep(float(sys.argv[2])); con.close(); print('closed', flush=True); sys.stdin.read()"


def test_a_writer_waits_for_the_lock_only_as_long_as_it_is_told(tmp_path):
    path = tmp_path / "w.duckdb"
    wh.connect(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOR, str(path), "1.5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"  # another process writes the warehouse for 1.5 s
        opened = time.monotonic()
        with pytest.raises(duckdb.IOException, match="lock"):
            wh.connect(path, lock_wait_s=0.2)  # gives up, naming the lock
        with wh.connect(path, lock_wait_s=30) as con:  # waits for it, then writes
            assert time.monotonic() - opened >= 1.0
            con.execute("CREATE TABLE scratch (x INTEGER)")
    finally:
        holder.communicate("", timeout=30)


def test_read_only_never_creates_or_migrates(tmp_path):
    missing = tmp_path / "none.duckdb"
    with pytest.raises(FileNotFoundError, match=r"none\.duckdb"):
        wh.connect_read_only(missing)
    assert not missing.exists()

    behind = tmp_path / "behind.duckdb"
    with duckdb.connect(str(behind)) as raw:  # a warehouse one migration behind this code
        raw.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
        for version, sql in enumerate(MIGRATIONS[:-1], start=1):
            raw.execute(sql)
            raw.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
    with pytest.raises(wh.SchemaError, match=rf"behind\.duckdb: schema version {len(MIGRATIONS) - 1} is older"):
        wh.connect_read_only(behind)
    with duckdb.connect(str(behind), read_only=True) as raw:
        assert wh.schema_version(raw) == len(MIGRATIONS) - 1  # left as it was
    with wh.connect(behind) as con:  # the next writer migrates it
        assert wh.schema_version(con) == len(MIGRATIONS)
    with wh.connect_read_only(behind) as con:
        assert wh.schema_version(con) == len(MIGRATIONS)


def test_a_corrupt_block_is_named_with_the_path_by_every_opener_and_nothing_is_written(tmp_path):
    path = tmp_path / "w.duckdb"
    damaged = corrupt_warehouse(path)
    for opener in (wh.connect, wh.connect_read_only):
        with pytest.raises(wh.WarehouseCorruptError) as info:
            opener(path)
        message = str(info.value)
        assert message.startswith(f"warehouse {path} is corrupt (Corrupt database file: computed checksum ")
        assert message.endswith("; nothing was written to it: restore it from a backup or move it aside")
        assert "\n" not in message and len(message) <= 280
    assert path.read_bytes() == damaged
    # the cheap check lets it open; DuckDB still refuses the damaged block when a query reads it
    with wh.connect(path, verify=False) as con, pytest.raises(duckdb.Error, match="Corrupt database file"):
        con.execute("SELECT sum(len(vector)) FROM embeddings").fetchall()


def test_a_damaged_header_is_named_with_the_path_even_without_verify(tmp_path):
    path = tmp_path / "w.duckdb"
    wh.connect(path).close()
    data = bytearray(path.read_bytes())
    data[100:164] = bytes(64)
    path.write_bytes(data)
    for opener in (wh.connect, wh.connect_read_only):
        with pytest.raises(wh.WarehouseCorruptError, match=f"warehouse {path} is corrupt .*restore it from a backup"):
            opener(path, verify=False)
    assert path.read_bytes() == bytes(data)
