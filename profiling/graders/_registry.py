"""Graders by name: the built-in ones and those installed through the ``uniroute.graders`` entry point group."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from profiling.graders._base import REQUIRED, Grader
from profiling.graders._choice import MMLUProLetterGrader, MultipleChoiceGrader
from profiling.graders._code import CodeGrader
from profiling.graders._judge import LLMJudgeGrader
from profiling.graders._text import ExactMatchGrader, NumericGrader, RegexGrader

__all__ = ["ENTRY_POINT_GROUP", "get_grader", "grader_catalog", "grader_names", "validate_grader"]

#: Installed packages add graders here: ``[project.entry-points."uniroute.graders"] name = "module:GraderClass"``.
ENTRY_POINT_GROUP = "uniroute.graders"

BUILTIN_GRADERS: dict[str, type[Grader]] = {
    cls.name: cls
    for cls in (
        MMLUProLetterGrader,
        MultipleChoiceGrader,
        ExactMatchGrader,
        NumericGrader,
        RegexGrader,
        CodeGrader,
        LLMJudgeGrader,
    )
}


@dataclass(frozen=True)
class _Source:
    """Where a name comes from: built-in, or one entry point (two entry points for a name: a clash)."""

    name: str
    builtin: type[Grader] | None
    entry_points: tuple[importlib.metadata.EntryPoint, ...]

    def describe(self) -> str:
        if self.builtin is not None:
            return "built-in"
        (ep,) = self.entry_points
        dist = ep.dist.name if ep.dist is not None else "?"
        return f"entry point {ep.value} ({dist})"

    def clash(self) -> str | None:
        """Why this name cannot be used, or None."""
        if len(self.entry_points) + (self.builtin is not None) < 2:
            return None
        sources = (["the built-in grader"] if self.builtin else []) + [
            f"{ep.value} ({ep.dist.name if ep.dist is not None else '?'})" for ep in self.entry_points
        ]
        return (
            f"name: grader {self.name!r} is defined more than once, by {' and '.join(sources)}; "
            f"rename the entry point in group {ENTRY_POINT_GROUP!r}"
        )


def _sources() -> dict[str, _Source]:
    # Read on every call (it is a few ms): a package installed, or a path added, since is seen.
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:  # the same distribution on sys.path twice is one definition
            seen.add((ep.name, ep.value))
            found.setdefault(ep.name, []).append(ep)
    names = sorted(set(BUILTIN_GRADERS) | set(found))
    return {n: _Source(n, BUILTIN_GRADERS.get(n), tuple(found.get(n, ()))) for n in names}


def grader_names() -> list[str]:
    """Names ``get_grader`` knows (built-in and installed), sorted."""
    return list(_sources())


def _load(source: _Source) -> type[Grader] | Callable[..., Grader]:
    problem = source.clash()
    if problem:
        raise ValueError(problem)
    if source.builtin is not None:
        return source.builtin
    (ep,) = source.entry_points
    try:
        loaded = ep.load()
    except Exception as exc:  # an installed plugin's import error must name the plugin, not crash obscurely
        raise ValueError(
            f"name: grader {source.name!r} from entry point {ep.value!r} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(loaded):
        raise ValueError(f"name: entry point {ep.value!r} of grader {source.name!r} is not a Grader class or factory")
    return loaded


def get_grader(name: str, options: Mapping[str, Any] | None = None) -> Grader:
    """The grader ``name`` with ``options`` (missing ones take their defaults).

    ``ValueError`` naming the field and value for an unknown name (listing the known ones), an unknown option
    or a bad option value.

    >>> get_grader("exact_match").version
    '1'
    >>> get_grader("numeric", {"abs_tol": 0.01}).version
    '1+abs_tol=0.01'
    """
    sources = _sources()
    source = sources.get(name) if isinstance(name, str) else None
    if source is None:
        raise ValueError(f"name: unknown grader {name!r}; known graders: {', '.join(sources)}")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options: expected a mapping of option names to values, got {options!r:.80}")
    bad_keys = [key for key in options or {} if not isinstance(key, str)]
    if bad_keys:
        raise ValueError(f"options: option names must be str, got {bad_keys[0]!r}")
    factory = _load(source)
    try:
        grader = factory(**dict(options or {}))
    except ValueError:
        raise
    except TypeError as exc:  # a plugin factory that does not take these options
        raise ValueError(f"options: grader {name!r} refused {dict(options or {})!r:.120}: {exc}") from exc
    if not isinstance(grader, Grader):
        raise ValueError(f"name: grader {name!r} made a {type(grader).__name__}, not a profiling.graders.Grader")
    if grader.name != name:
        raise ValueError(f"name: entry point {name!r} made a grader named {grader.name!r}; the names must agree")
    return grader


def validate_grader(
    name: str,
    options: Mapping[str, Any] | None = None,
    references: Sequence[str | None] | None = None,
    tests: Sequence[str | None] | None = None,
) -> None:
    """Refuse, at import time, what grading would fail on: the name, the options, each row's reference and tests.

    Raises ``ValueError`` naming the field, the row index and the value (``references[3]: expected one
    number, got 'abc'``). ``tests=None`` for a grader that needs tests is refused too.

    >>> validate_grader("numeric", references=["1", "x"])
    Traceback (most recent call last):
    ...
    ValueError: references[1]: expected one number, got 'x'
    """
    grader = get_grader(name, options)
    for field, values in (("references", references), ("tests", tests)):
        if values is not None and (isinstance(values, str | bytes) or not isinstance(values, Sequence)):
            raise ValueError(f"{field}: expected a sequence (one value per row), got {type(values).__name__}")
    if references is not None:
        for i, reference in enumerate(references):
            grader.check_reference(reference, f"references[{i}]")
    if grader.needs_tests and tests is None and references is not None:
        raise ValueError(f"tests: grader {name!r} needs tests for each of the {len(references)} rows, got none")
    if tests is not None:
        if references is not None and len(tests) != len(references):
            raise ValueError(f"tests: {len(tests)} values for {len(references)} references")
        for i, value in enumerate(tests):
            grader.check_tests(value, f"tests[{i}]")


def _default_version(cls: type[Grader]) -> str | None:
    try:
        return cls().version
    except (ValueError, TypeError):  # a required option: the version without options
        return getattr(cls, "base_version", None)


def _describe_class(cls: type[Grader]) -> dict[str, Any]:
    return {
        "name": cls.name,
        "version": _default_version(cls),
        "description": cls.description,
        "options": [
            {
                "name": spec.name,
                "default": None if spec.default is REQUIRED else spec.default,
                "required": spec.default is REQUIRED,
                "versioned": spec.versioned,
                "description": spec.description,
            }
            for spec in cls.option_specs
        ],
    }


def grader_catalog() -> list[dict[str, Any]]:
    """One dict per known grader, sorted by name, for ``uniroute graders``.

    Keys: ``name``, ``version`` (with default options), ``description`` (one line), ``options`` (a list of
    dicts: name, default, required, versioned, description), ``source`` ("built-in" or the entry point), and
    ``error`` (why it cannot be used, e.g. a name clash or an import error; None when it can).
    """
    catalog = []
    for source in _sources().values():
        entry: dict[str, Any] = {"name": source.name, "version": None, "description": "", "options": []}
        try:
            loaded = _load(source)
            if isinstance(loaded, type) and issubclass(loaded, Grader):
                entry.update(_describe_class(loaded))
            else:
                grader = loaded()
                entry.update(_describe_class(type(grader)), version=grader.version)
            made = entry["name"]
            entry["name"] = source.name
            entry["error"] = None if made == source.name else f"name: made a grader named {made!r}"
        except Exception as exc:  # listed with its problem, so one broken plugin does not hide the others
            entry["error"] = str(exc)
        entry["source"] = source.describe() if not source.clash() else "clash"
        catalog.append(entry)
    return catalog
