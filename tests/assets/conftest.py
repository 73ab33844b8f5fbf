"""A real Dagster instance in a temporary DAGSTER_HOME with the project's dagster.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def instance(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance
