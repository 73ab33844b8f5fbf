"""What every grader shares: options with defaults, a version that includes non-default options, batch grading."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

__all__ = [
    "REQUIRED",
    "CompleteFn",
    "Completion",
    "GradeContext",
    "GradeItem",
    "GradeResult",
    "Grader",
    "JudgeCache",
    "Option",
    "PairGrader",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of an option that has none: the grader refuses to be made without it.
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Option:
    """One accepted option of a grader.

    ``parse(value, field)`` returns the normalised value or raises ``ValueError`` naming ``field``. A
    ``versioned`` option with a non-default value is part of the grader's version (``show`` writes it there);
    an unversioned one (e.g. parallelism) cannot change a score.
    """

    name: str
    default: Any
    description: str
    parse: Callable[[Any, str], Any]
    versioned: bool = True
    show: Callable[[Any], str] = repr


@dataclass(frozen=True)
class GradeItem:
    """What a grader may look at for one answer: the response, the prompt's reference, the prompt, code tests."""

    response: str
    reference: str | None = None
    prompt: str | None = None
    tests: str | None = None


@dataclass(frozen=True)
class GradeResult:
    """One item's grade. ``score`` None: not graded (``error`` says why), so it must not be stored."""

    score: float | None
    judge: str | None = None
    judge_cost_usd: float | None = None
    error: str | None = None
    #: Why this score, for people (e.g. the code grader's "timed out after 10 s"); never stored.
    detail: str | None = None
    #: The judge's verdict came from the cache: nothing was paid for it now.
    cached: bool = False


class Completion(Protocol):
    """An LLM's answer as ``complete`` returns it."""

    response: str
    cost_usd: float | None
    model_id: str


#: ``complete(llm_name, requests)``: one Completion (None: failed after retries) per request, in order.
CompleteFn = Callable[[str, list[dict[str, Any]]], list["Completion | None"]]


class JudgeCache(Protocol):
    """Judge verdicts by key; rows are dicts with ``key, judge, score, verdict, cost_usd``."""

    def get(self, keys: list[str]) -> dict[str, dict[str, Any]]: ...

    def put(self, rows: list[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class GradeContext:
    """What graders that call out need: ``complete`` for LLM calls, a verdict ``cache``, catalog model ids."""

    complete: CompleteFn | None = None
    cache: JudgeCache | None = None
    #: Catalog name -> model id, so a cache key can be computed before calling the judge.
    model_ids: Mapping[str, str] = field(default_factory=dict)


def check_str(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a str, got {type(value).__name__} {value!r:.80}")


def check_sequence(value: object, field: str) -> None:
    # A str is a Sequence[str] too; taking one for a batch of one-character answers is always a bug.
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{field}: expected a sequence of str, got {type(value).__name__} {value!r:.80}")


# ---- option parsers: each returns the normalised value or raises naming the field ----


def non_negative_float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{field}: expected a finite number >= 0, got {value!r}")
    return float(value)


def positive_float(value: Any, field: str) -> float:
    if non_negative_float(value, field) <= 0:
        raise ValueError(f"{field}: expected a number > 0, got {value!r}")
    return float(value)


def int_between(low: int, high: int) -> Callable[[Any, str], int]:
    def parse(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{field}: expected an integer in [{low}, {high}], got {value!r}")
        return value

    return parse


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected true or false, got {value!r}")
    return value


def optional_str(value: Any, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{field}: expected a str, got {type(value).__name__} {value!r:.80}")
    return value


def non_empty_str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: expected a non-empty str, got {value!r:.80}")
    return value


class Grader(ABC):
    """Scores answers into [0, 1]; its ``name`` and ``version`` are stored with every grade.

    Subclasses set ``name``, ``base_version`` (bumped whenever the same input could get another score),
    ``description`` and ``option_specs``; options arrive as keyword arguments, are checked and stored as
    attributes, and the non-default versioned ones are appended to the version (``"1+rel_tol=0.05"``).
    """

    name: ClassVar[str]
    base_version: ClassVar[str]
    description: ClassVar[str] = ""
    option_specs: ClassVar[tuple[Option, ...]] = ()
    #: Each item needs a reference (a str); graders that do not set this False.
    needs_reference: ClassVar[bool] = True
    #: Each item needs ``tests`` (code graders).
    needs_tests: ClassVar[bool] = False
    #: ``grade_items`` needs ``GradeContext.complete`` (LLM calls).
    needs_complete: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        specs = {spec.name: spec for spec in self.option_specs}
        unknown = sorted(set(options) - set(specs))
        if unknown:
            accepted = ", ".join(specs) or "none"
            raise ValueError(
                f"options.{unknown[0]}: unknown option of grader {self.name!r} "
                f"(value {options[unknown[0]]!r:.80}); accepted: {accepted}"
            )
        values: dict[str, Any] = {}
        for spec in self.option_specs:
            if spec.name in options:
                values[spec.name] = spec.parse(options[spec.name], f"options.{spec.name}")
            elif spec.default is REQUIRED:
                raise ValueError(f"options.{spec.name}: required by grader {self.name!r}, got nothing")
            else:
                values[spec.name] = spec.default
        self.options: dict[str, Any] = values
        for key, value in values.items():
            setattr(self, key, value)
        self._check_options()

    def _check_options(self) -> None:  # noqa: B027 -- a hook: most graders have nothing to check
        """Raise ``ValueError`` for options that are valid alone but not together."""

    def _version_parts(self) -> list[str]:
        """``name=value`` of each versioned option whose value is not its default, in declaration order."""
        return [
            f"{spec.name}={spec.show(self.options[spec.name])}"
            for spec in self.option_specs
            if spec.versioned and self.options[spec.name] != spec.default
        ]

    @property
    def version(self) -> str:
        """``base_version``, then ``+name=value`` per non-default versioned option: such grades are not comparable."""
        return "+".join([self.base_version, *self._version_parts()])

    # ---- validation (also used at import time by ``validate_grader``) ----

    def check_reference(self, reference: object, field: str) -> None:
        """Raise ``ValueError`` naming ``field`` when this grader cannot grade against ``reference``."""
        if self.needs_reference or reference is not None:
            check_str(reference, field)

    def check_tests(self, tests: object, field: str) -> None:
        """Raise ``ValueError`` naming ``field`` when this grader cannot use ``tests``."""
        if self.needs_tests:
            if not isinstance(tests, str) or not tests.strip():
                raise ValueError(f"{field}: grader {self.name!r} needs tests (Python code), got {tests!r:.80}")
        elif tests is not None:
            check_str(tests, field)

    def item_error(self, item: GradeItem) -> str | None:
        """Why ``item`` cannot be graded (the first problem), or None."""
        try:
            check_str(item.response, "response")
            self.check_reference(item.reference, "reference")
            self.check_tests(item.tests, "tests")
        except ValueError as exc:
            return str(exc)
        return None

    # ---- grading ----

    @abstractmethod
    def grade_items(self, items: Sequence[GradeItem], context: GradeContext | None = None) -> list[GradeResult]:
        """One result per item, in order. An item that cannot be graded gets ``score=None`` and an ``error``;
        the batch never fails for one item."""

    def grade(self, response: str, reference: str | None) -> float:
        """Score in [0, 1] of ``response`` against ``reference``; ``ValueError`` when it cannot be graded."""
        check_str(response, "response")
        self.check_reference(reference, "reference")
        (result,) = self.grade_items([GradeItem(response, reference)])
        if result.score is None:
            raise ValueError(f"response: not graded: {result.error}")
        return result.score

    def grade_many(self, responses: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
        """Scores of ``responses[i]`` against ``references[i]``, as a float64 array."""
        _check_batch(responses, references)
        for i, (response, reference) in enumerate(zip(responses, references, strict=True)):
            check_str(response, f"responses[{i}]")
            self.check_reference(reference, f"references[{i}]")
        results = self.grade_items([GradeItem(r, a) for r, a in zip(responses, references, strict=True)])
        scores = np.empty(len(results), dtype=np.float64)
        for i, result in enumerate(results):
            if result.score is None:
                raise ValueError(f"responses[{i}]: not graded: {result.error}")
            scores[i] = result.score
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"


def _check_batch(responses: object, references: object) -> None:
    check_sequence(responses, "responses")
    check_sequence(references, "references")
    if len(responses) != len(references):  # type: ignore[arg-type]
        raise ValueError(
            f"responses, references: lengths differ ({len(responses)} responses, {len(references)} references)"  # type: ignore[arg-type]
        )


class PairGrader(Grader):
    """A grader that needs only (response, reference): implement ``_score``."""

    @abstractmethod
    def _score(self, response: str, reference: str) -> float:
        """Score of an already-checked pair."""

    def grade_items(self, items: Sequence[GradeItem], context: GradeContext | None = None) -> list[GradeResult]:
        """Scores each item; an item with a bad response or reference gets ``score=None`` and the reason."""
        results = []
        for item in items:
            error = self.item_error(item)
            score = None if error else self._score(item.response, item.reference)  # type: ignore[arg-type]
            results.append(GradeResult(score, error=error))
        return results

    def grade_many(self, responses: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
        """Scores of ``responses[i]`` against ``references[i]``, as a float64 array (checked and scored in one
        pass: the MMLU-Pro benchmark grades 347,215 rows)."""
        _check_batch(responses, references)
        scores = np.empty(len(responses), dtype=np.float64)
        for i, (response, reference) in enumerate(zip(responses, references, strict=True)):
            check_str(response, f"responses[{i}]")
            self.check_reference(reference, f"references[{i}]")
            scores[i] = self._score(response, reference)  # type: ignore[arg-type]
        return scores
