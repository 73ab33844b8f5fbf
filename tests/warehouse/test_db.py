"""Opening the warehouse: where its files resolve, and read-only connections that never migrate nor lock out
other readers."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

import warehouse as wh
from warehouse.schema import MIGRATIONS

HOLD_READ_ONLY = "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); "
HOLD_READ_ONLY += "sys.stdin.read()"


def test_paths_resolve_from_the_data_home_unless_set(tmp_path, monkeypatch):
    for name in ("UNIROUTE_DATA_HOME", "UNIROUTE_WAREHOUSE", "UNIROUTE_CATALOG"):
        monkeypatch.delenv(name, raising=False)
    assert wh.data_home() == wh.db.PROJECT_ROOT / "data"
    assert str(wh.default_catalog_path()) == "llms.yaml"
    monkeypatch.setenv("UNIROUTE_DATA_HOME", str(tmp_path))
    assert wh.default_path() == tmp_path / "warehouse.duckdb"
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
