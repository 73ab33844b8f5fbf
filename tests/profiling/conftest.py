"""Fixtures of the profiling tests."""

from __future__ import annotations

import pytest

import warehouse as wh
from profiling.importers import import_mmlu_pro


@pytest.fixture
def con(tmp_path, mmlu_like_dir):
    """A warehouse in ``tmp_path`` holding the fixture dataset's prompts."""
    with wh.connect(tmp_path / "w.duckdb") as con:
        import_mmlu_pro(con, mmlu_like_dir, seed=0)
        yield con
