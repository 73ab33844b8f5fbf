"""serving/ is loaded by users without Dagster: none of its modules imports a floor above it or Dagster, not even
inside a function (the `uniroute` entry point that assembles every floor's commands is pipelines/cli.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"
ABOVE = {"pipelines", "assets", "dagster"}


def _imported(path: Path) -> set[str]:
    """The top-level packages ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(SERVING.glob("*.py")), ids=lambda p: p.name)
def test_serving_imports_nothing_above_it(path):
    assert _imported(path) & ABOVE == set()
