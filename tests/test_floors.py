"""The house's floors (docs/architecture.md): each room imports only the rooms its floor may, anywhere in it (a
function's own imports included), and Dagster and MLflow stay out of the rooms users load without them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR_1 = {"router_core", "warehouse", "openai_compat"}
#: room -> the rooms of ours it may import (docs/architecture.md's table)
MAY_IMPORT = {
    "router_core": set(),
    "warehouse": set(),
    "openai_compat": set(),
    "profiling": FLOOR_1,
    "serving": FLOOR_1,
    "replay": FLOOR_1 | {"profiling"},  # a prompt is answered when rendered as the collector renders it
    "assets": FLOOR_1 | {"profiling", "serving"},
    "pipelines": FLOOR_1 | {"profiling", "serving", "replay", "assets"},
}
#: room -> libraries it never imports: users load a router (serving) and the algorithms without Dagster or MLflow
NEVER = {
    "router_core": {"dagster", "mlflow"},
    "warehouse": {"dagster", "mlflow"},
    "openai_compat": {"dagster", "mlflow"},
    "serving": {"dagster"},
    "replay": {"dagster", "mlflow"},
    # profiling's CLI gives new LLMs their Dagster partitions when $DAGSTER_HOME is set (profiling.cli)
    "profiling": {"mlflow"},
}


def _imports(path: Path) -> set[str]:
    """The top-level packages ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules(room: str) -> list[Path]:
    return sorted((ROOT / room).rglob("*.py"))


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_a_room_imports_only_the_floors_below_it(room):
    ours = set(MAY_IMPORT) - {room}
    wrong = {
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for path in _modules(room)
        if (bad := (_imports(path) & ours) - MAY_IMPORT[room])
    }
    assert not wrong


@pytest.mark.parametrize("room", sorted(NEVER))
def test_dagster_and_mlflow_stay_out_of_the_rooms_loaded_without_them(room):
    wrong = {
        f"{p.relative_to(ROOT)} imports {sorted(bad)}" for p in _modules(room) if (bad := _imports(p) & NEVER[room])
    }
    assert not wrong


def test_every_room_is_listed():
    rooms = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert rooms == set(MAY_IMPORT)


def test_the_litellm_plug_in_imports_only_litellm_httpx_and_the_standard_library():
    """integrations/litellm_uniroute installs into LiteLLM's environment: nothing of ours, no third party but the
    two its pyproject.toml names (it asks the gateway over HTTP)."""
    import sys

    package = ROOT / "integrations" / "litellm_uniroute" / "litellm_uniroute"
    allowed = {"litellm", "httpx", "litellm_uniroute", "__future__"} | set(sys.stdlib_module_names)
    wrong = {
        f"{p.relative_to(ROOT)} imports {sorted(bad)}" for p in package.rglob("*.py") if (bad := _imports(p) - allowed)
    }
    assert package.is_dir() and not wrong
