"""LLM-as-judge: a catalog LLM scores each answer with a rubric; verdicts are cached so regrading never pays twice."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from profiling.graders._base import (
    REQUIRED,
    GradeContext,
    GradeItem,
    Grader,
    GradeResult,
    Option,
    check_str,
    int_between,
    non_empty_str,
    positive_float,
)

__all__ = ["DEFAULT_RUBRIC", "InMemoryJudgeCache", "LLMJudgeGrader", "judge_cache_key"]

DEFAULT_RUBRIC = """\
You are grading an answer to a question. Judge whether the answer is correct and complete; when a reference \
answer is given, use it as the ground truth.

Question:
{prompt}

Reference answer:
{reference}

Answer to grade:
{response}

Explain your judgement in a few sentences, then end with a final line of exactly this form, with a number from 0 \
(wrong) to {scale} (fully correct):
Score: <number>"""
DEFAULT_SCORE_PATTERN = r"(?i)score\s*[:=]\s*\**\s*([0-9]+(?:\.[0-9]+)?)"
_PLACEHOLDER = re.compile(r"\{(prompt|response|reference|scale)\}")
_ABSENT = "(none)"


def _rubric(value: Any, field: str) -> str:
    non_empty_str(value, field)
    if "{response}" not in value:
        raise ValueError(f"{field}: the rubric must contain {{response}}, got {value!r:.80}")
    return value


def _score_pattern(value: Any, field: str) -> str:
    non_empty_str(value, field)
    try:
        groups = re.compile(value).groups
    except re.error as exc:
        raise ValueError(f"{field}: not a regular expression ({exc}), got {value!r}") from exc
    if groups != 1:
        raise ValueError(f"{field}: expected a regular expression with one group (the score), got {value!r}")
    return value


def _short_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def judge_cache_key(judge: str, model_id: str, grader_version: str, item: GradeItem) -> str:
    """The verdict cache's key: a hash of the judge, its model id, the grader version and the graded item."""
    payload = json.dumps([judge, model_id, grader_version, item.prompt, item.response, item.reference])
    return hashlib.sha256(payload.encode()).hexdigest()


class InMemoryJudgeCache:
    """A ``JudgeCache`` in a dict (tests, one-off runs); a key already stored is kept, like the warehouse's."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored rows of ``keys`` that exist."""
        return {key: self.rows[key] for key in keys if key in self.rows}

    def put(self, rows: list[dict[str, Any]]) -> None:
        """Store rows whose key is new."""
        for row in rows:
            self.rows.setdefault(row["key"], dict(row))


class LLMJudgeGrader(Grader):
    """A catalog LLM (option ``judge``) grades each answer with ``rubric``; its score / ``scale`` is the grade.

    The rubric's ``{prompt}``, ``{response}``, ``{reference}`` and ``{scale}`` are filled in (a missing prompt or
    reference reads "(none)"); the last match of ``pattern`` in the verdict is the score. A verdict with no
    score, a score outside [0, scale] or a failed call is a failure of that item (``score=None``), never a 0.
    Calls go through the context's ``complete`` (temperature 0), verdicts through its ``cache``: an item whose
    key (``judge_cache_key``) is cached is not sent again. The judge's name and version are part of this
    grader's version; ``GradeResult.judge`` is "<judge>@<model id that answered>".
    """

    name = "llm_judge"
    base_version = "1"
    description = "LLM-as-judge: a catalog LLM scores the answer with a rubric (final line 'Score: <n>')"
    needs_reference = False
    needs_complete = True
    option_specs: ClassVar[tuple[Option, ...]] = (
        Option("judge", REQUIRED, "the catalog name of the judging LLM", non_empty_str),
        Option(
            "rubric",
            DEFAULT_RUBRIC,
            "prompt template: {prompt} {response} {reference} {scale}",
            _rubric,
            True,
            _short_hash,
        ),
        Option("scale", 10.0, "the highest score the rubric asks for", positive_float),
        Option("pattern", DEFAULT_SCORE_PATTERN, "regex with one group: the score (its last match)", _score_pattern),
        Option("max_tokens", 512, "the judge's max_tokens", int_between(1, 1 << 20)),
    )

    def _check_options(self) -> None:
        self._pattern = re.compile(self.pattern)

    def render(self, item: GradeItem) -> str:
        """The judge's prompt for ``item``: one pass over the rubric, so an answer holding "{reference}" stays as is."""
        values = {
            "prompt": item.prompt if item.prompt is not None else _ABSENT,
            "response": item.response,
            "reference": item.reference if item.reference is not None else _ABSENT,
            "scale": f"{self.scale:g}",
        }
        return _PLACEHOLDER.sub(lambda match: values[match[1]], self.rubric)

    def parse(self, verdict: str) -> tuple[float | None, str | None]:
        """(score in [0, 1], None) or (None, why the verdict cannot be read)."""
        matches = list(self._pattern.finditer(verdict))
        if not matches:
            return None, f"verdict has no score matching {self.pattern!r}: {verdict[-120:]!r}"
        try:
            value = float(matches[-1].group(1))
        except (TypeError, ValueError):
            return None, f"verdict's score is not a number: {matches[-1].group(0)!r}"
        if not 0 <= value <= self.scale:
            return None, f"verdict's score {value:g} is outside [0, {self.scale:g}]"
        return value / self.scale, None

    def grade_items(self, items: Sequence[GradeItem], context: GradeContext | None = None) -> list[GradeResult]:
        """Cached verdicts first, then one ``complete`` call for the distinct items left; see the class docstring."""
        if context is None or context.complete is None:
            raise ValueError(f"context.complete: grader {self.name!r} needs a complete function to call its judge")
        model_id = context.model_ids.get(self.judge, "")
        results: list[GradeResult | None] = [None] * len(items)
        keys: list[str | None] = [None] * len(items)
        for i, item in enumerate(items):
            error = self.item_error(item)
            if error:
                results[i] = GradeResult(None, error=error)
            else:
                keys[i] = judge_cache_key(self.judge, model_id, self.version, item)
        wanted = list(dict.fromkeys(key for key in keys if key is not None))
        cached = context.cache.get(wanted) if context.cache is not None and wanted else {}
        missing = [key for key in wanted if key not in cached]
        first = {key: i for i, key in reversed(list(enumerate(keys))) if key is not None}
        fresh = self._ask(missing, {key: items[first[key]] for key in missing}, context)
        if context.cache is not None:
            context.cache.put([row for row, _ in fresh.values() if row is not None])
        seen: set[str] = set()
        for i, key in enumerate(keys):
            if key is None:
                continue
            if key in cached:
                row = cached[key]
                results[i] = GradeResult(row["score"], judge=row["judge"], judge_cost_usd=row["cost_usd"], cached=True)
            else:
                row, result = fresh[key]
                # The same item twice in one batch is paid once: the copies count as cached.
                results[i] = result if key not in seen else _as_cached(result)
                seen.add(key)
        return results  # type: ignore[return-value]

    def _ask(
        self, keys: list[str], items: dict[str, GradeItem], context: GradeContext
    ) -> dict[str, tuple[dict[str, Any] | None, GradeResult]]:
        """Key -> (cache row or None when unusable, result) for each of ``keys``, in one ``complete`` call."""
        if not keys:
            return {}
        params = {"temperature": 0, "max_tokens": self.max_tokens}
        requests = [{"messages": [{"role": "user", "content": self.render(items[k])}], "params": params} for k in keys]
        try:
            completions = context.complete(self.judge, requests)  # type: ignore[misc]
        except Exception as exc:  # e.g. the judge is not in the catalog: these items fail, the batch goes on
            failed = GradeResult(None, judge=self.judge, error=f"judge {self.judge!r}: {type(exc).__name__}: {exc}")
            return {key: (None, failed) for key in keys}
        if len(completions) != len(requests):
            raise ValueError(
                f"complete: returned {len(completions)} completions for {len(requests)} requests to {self.judge!r}"
            )
        out: dict[str, tuple[dict[str, Any] | None, GradeResult]] = {}
        for key, completion in zip(keys, completions, strict=True):
            if completion is None:
                out[key] = (None, GradeResult(None, judge=self.judge, error=f"judge {self.judge!r}: call failed"))
                continue
            judge = f"{self.judge}@{completion.model_id}"
            verdict = completion.response if isinstance(completion.response, str) else ""
            score, error = self.parse(verdict)
            result = GradeResult(score, judge=judge, judge_cost_usd=completion.cost_usd, error=error, detail=verdict)
            row = None
            if score is not None:
                row = {"key": key, "judge": judge, "score": score, "verdict": verdict, "cost_usd": completion.cost_usd}
            out[key] = (row, result)
        return out

    def check_reference(self, reference: object, field: str) -> None:
        if reference is not None:
            check_str(reference, field)


def _as_cached(result: GradeResult) -> GradeResult:
    return GradeResult(result.score, result.judge, result.judge_cost_usd, result.error, result.detail, cached=True)
