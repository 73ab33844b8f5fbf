"""Graders installed by other packages through the ``uniroute.graders`` entry point group, for real: a module
and its ``*.dist-info`` written to a directory put on ``sys.path``, found by ``importlib.metadata``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from profiling.graders import get_grader, grader_catalog, grader_names, validate_grader

PLUGIN = '''
from typing import ClassVar

from profiling.graders import Option, PairGrader


def _positive_int(value, field):
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field}: expected an integer > 0, got {value!r}")
    return value


class LengthGrader(PairGrader):
    """1 when the response is at most max_words words long."""

    name = "word_limit"
    base_version = "3"
    description = "1 when the response has at most max_words words"
    needs_reference = False
    option_specs: ClassVar = (Option("max_words", 5, "the word limit", _positive_int),)

    def _score(self, response, reference):
        return 1.0 if len(response.split()) <= self.max_words else 0.0


def make_shouting(**options):
    return ShoutingGrader(**options)


class ShoutingGrader(PairGrader):
    name = "shouting"
    base_version = "1"
    description = "1 when the response is upper case"
    needs_reference = False

    def _score(self, response, reference):
        return 1.0 if response.isupper() else 0.0
'''


def install(root: Path, dist: str, entry_points: dict[str, str], module: str = "uniroute_test_plugin") -> Path:
    """Write ``module`` and a ``<dist>-1.0.dist-info`` declaring ``entry_points`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(PLUGIN)
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(textwrap.dedent(f"[uniroute.graders]\n{lines}\n"))
    return root


def test_an_installed_grader_class_is_found_listed_and_validated(tmp_path, monkeypatch):
    assert "word_limit" not in grader_names()
    monkeypatch.syspath_prepend(
        str(install(tmp_path, "word-limit", {"word_limit": "uniroute_test_plugin:LengthGrader"}))
    )
    assert "word_limit" in grader_names()
    grader = get_grader("word_limit", {"max_words": 2})
    assert type(grader).__name__ == "LengthGrader" and grader.version == "3+max_words=2"
    assert grader.grade_many(["two words", "three words here"], [None, None]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"options\.max_words: expected an integer > 0, got 0"):
        get_grader("word_limit", {"max_words": 0})
    validate_grader("word_limit", None, [None, "x"])
    (entry,) = [e for e in grader_catalog() if e["name"] == "word_limit"]
    assert entry["version"] == "3" and entry["error"] is None
    assert entry["source"] == "entry point uniroute_test_plugin:LengthGrader (word-limit)"
    assert [(o["name"], o["default"]) for o in entry["options"]] == [("max_words", 5)]


def test_an_installed_factory_is_found(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(install(tmp_path, "shout", {"shouting": "uniroute_test_plugin:make_shouting"})))
    assert get_grader("shouting").grade("HEY", None) == 1.0
    (entry,) = [e for e in grader_catalog() if e["name"] == "shouting"]
    assert entry["version"] == "1" and entry["description"] == "1 when the response is upper case"


def test_a_name_clash_with_a_builtin_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(install(tmp_path, "evil", {"numeric": "uniroute_test_plugin:LengthGrader"})))
    with pytest.raises(
        ValueError,
        match=r"name: grader 'numeric' is defined more than once, by the built-in grader "
        r"and uniroute_test_plugin:LengthGrader \(evil\)",
    ):
        get_grader("numeric")
    assert get_grader("exact_match").grade("a", "A") == 1.0  # the other graders still work
    (entry,) = [e for e in grader_catalog() if e["name"] == "numeric"]
    assert entry["source"] == "clash" and "defined more than once" in entry["error"]


def test_a_name_clash_between_two_plugins_is_refused(tmp_path, monkeypatch):
    install(tmp_path, "one", {"dup": "uniroute_test_plugin:LengthGrader"})
    install(tmp_path / "b", "two", {"dup": "uniroute_test_plugin:make_shouting"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"grader 'dup' is defined more than once"):
        get_grader("dup")


def test_a_plugin_whose_grader_has_another_name_or_fails_to_import_is_refused(tmp_path, monkeypatch):
    install(tmp_path, "misnamed", {"alias": "uniroute_test_plugin:LengthGrader"})
    install(tmp_path / "b", "broken", {"broken": "no_such_module_xyz:Grader"}, module="unused_module")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"name: entry point 'alias' made a grader named 'word_limit'"):
        get_grader("alias")
    with pytest.raises(
        ValueError, match=r"grader 'broken' from entry point 'no_such_module_xyz:Grader' failed to load"
    ):
        get_grader("broken")
    catalog = {e["name"]: e for e in grader_catalog()}
    assert "ModuleNotFoundError" in catalog["broken"]["error"]
    assert catalog["alias"]["error"] == "name: made a grader named 'word_limit'"
