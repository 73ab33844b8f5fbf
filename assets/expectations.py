"""Great Expectations suites for the per-LLM tables, in code, run in an ephemeral context (no gx/ folder).

Each table's expectations are grouped by the property they test (schema, coverage, score range, empty responses,
token counts), and each property becomes one Dagster check with its own severity: a broken schema, too little
coverage or scores outside [0, 1] block (the LLM gets no features and no place in a router); empty responses and
missing token counts are mild anomalies that warn. Every outcome carries a one-line message in the user's terms
("coverage 86% < 98% (176 of 204 validation prompts)") and, when it fails, the failed expectations.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import polars as pl

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # configured before great_expectations is imported

#: Default floors, overridable per run through the assets' config.
COVERAGE_FLOOR = 0.98
EMPTY_RESPONSE_CEILING = 0.01
# Type names as Great Expectations sees pandas columns (dtype names, or Python types of object values).
TEXT = ["str", "object", "string"]
INTEGER = ["int", "int32", "int64", "Int32", "Int64"]
FLOAT = ["float", "float32", "float64", "Float64"]

#: The properties each table is checked for, and whether a failure blocks (severity ERROR) or warns (WARN).
RESPONSE_PROPERTIES = {"schema": True, "coverage": True, "empty_responses": False, "token_counts": False}
GRADE_PROPERTIES = {"schema": True, "coverage": True, "score_range": True}


@dataclass(frozen=True)
class PropertyOutcome:
    """Whether one property of one LLM's table holds, said in a sentence, with the failed expectations."""

    prop: str
    blocking: bool
    passed: bool
    message: str
    failures: list[dict] = field(default_factory=list)
    numbers: dict[str, float | int] = field(default_factory=dict)

    def details(self) -> str:
        return json.dumps(self.failures, default=str)


def all_blocking_passed(outcomes: dict[str, PropertyOutcome]) -> bool:
    return all(o.passed for o in outcomes.values() if o.blocking)


def _run(frame: pl.DataFrame, expectations: list) -> list:
    """Validate ``frame`` against ``expectations`` (each with ``meta={"property": ...}``); the per-expectation
    results, in any order."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("warehouse")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    )
    return list(batch.validate(gx.ExpectationSuite(name="suite", expectations=expectations)).results)


def _failure(result) -> dict:
    config = result.expectation_config
    raised = result.exception_info.get("exception_message") if isinstance(result.exception_info, dict) else None
    return {
        "expectation": config.type,
        "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)},
        "observed": result.result.get("observed_value"),
        "unexpected": result.result.get("unexpected_count"),
        "of": result.result.get("element_count"),
        "sample": (result.result.get("partial_unexpected_list") or [])[:5],
        **({"error": raised} if raised else {}),
    }


def _sample(values: list) -> str:
    shown = ", ".join(str(v) for v in values[:3])
    return f" (e.g. {shown})" if shown else ""


def _explain(failure: dict) -> str:
    """One failed expectation in the user's terms."""
    kind, kwargs = failure["expectation"], failure["kwargs"]
    column = kwargs.get("column")
    count, total = failure["unexpected"], failure["of"]
    if failure.get("error") and kind != "expect_column_to_exist":
        return f"{column or kind}: could not be checked ({failure['error']})"
    if kind == "expect_column_to_exist":
        return f"no column {column}"
    if kind == "expect_column_values_to_be_in_type_list":
        return f"column {column} holds {failure['observed']}, expected {' or '.join(kwargs['type_list'][:2])}"
    if kind == "expect_compound_columns_to_be_unique":
        pairs = [tuple(v.values()) if isinstance(v, dict) else v for v in failure["sample"]]
        return f"{count} rows repeat a ({', '.join(kwargs['column_list'])}) pair{_sample(pairs)}"
    if kind == "expect_column_values_to_not_be_null":
        return f"{count} of {total} rows have no {column}"
    if kind == "expect_column_values_to_be_between":
        low, high = (
            f"{v:g}" if isinstance(v, int | float) else v for v in (kwargs.get("min_value"), kwargs.get("max_value"))
        )
        bounds = f"< {low}" if high is None else f"outside [{low}, {high}]"
        return f"{count} of {total} rows have {column} {bounds}{_sample(failure['sample'])}"
    return f"{kind} failed on {column or 'the table'}{_sample(failure['sample'])}"


def _percent(value: float, reference: float) -> str:
    """``value`` as a percentage with as many decimals as it takes to tell it from ``reference`` (98% vs 97.6%)."""
    for digits in (0, 1, 2):
        if f"{100 * value:.{digits}f}" != f"{100 * reference:.{digits}f}" or value == reference:
            return f"{100 * value:.{digits}f}%"
    return f"{100 * value:.3f}%"


def _coverage(frame: pl.DataFrame, n_validation: int, floor: float, results: list) -> PropertyOutcome:
    answered = frame["prompt_id"].n_unique() if "prompt_id" in frame.columns else frame.height
    share = answered / n_validation if n_validation else 0.0
    passed = all(r.success for r in results) and n_validation > 0
    sign = ">=" if passed else "<"
    message = (
        f"coverage {_percent(share, floor)} {sign} {_percent(floor, share)} "
        f"({answered} of {n_validation} validation prompts)"
        if n_validation
        else "no validation prompts to cover: import a prompt set with a validation split"
    )
    failures = [_failure(r) for r in results if not r.success]
    numbers = {"coverage_percent": round(100 * share, 2), "answered": answered, "validation_prompts": n_validation}
    return PropertyOutcome("coverage", True, passed, message, failures, numbers)


def _outcome(prop: str, blocking: bool, results: list, ok: str) -> PropertyOutcome:
    failures = [_failure(r) for r in results if not r.success]
    messages = list(dict.fromkeys(_explain(f) for f in failures))
    return PropertyOutcome(prop, blocking, not failures, "; ".join(messages) or ok, failures)


def _grouped(results: list) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for result in results:
        grouped.setdefault(result.expectation_config.meta["property"], []).append(result)
    return grouped


def import_checks() -> None:
    """Import Great Expectations (~2.5 s of CPU) ahead of the checks: a profiling run does it while it waits on its
    endpoint, so its checks, while it holds the warehouse, take no longer than they must."""
    import great_expectations  # noqa: F401


def check_responses(
    responses: pl.DataFrame, n_validation: int, coverage_floor: float = COVERAGE_FLOOR
) -> dict[str, PropertyOutcome]:
    """One LLM's validation responses, by property: schema (columns, types, one row per prompt) and coverage
    block; empty responses and token counts > 0 (collected answers only: imported results may carry neither
    text nor tokens, their scores came with them) warn."""
    import great_expectations as gx

    e = gx.expectations

    def meta(prop: str) -> dict:
        return {"meta": {"property": prop}}

    whole = _grouped(
        _run(
            responses,
            [
                *[
                    e.ExpectColumnToExist(column=c, **meta("schema"))
                    for c in ("model", "prompt_id", "response", "prompt_tokens")
                ],
                *[
                    e.ExpectColumnValuesToBeInTypeList(column=c, type_list=TEXT, **meta("schema"))
                    for c in ("model", "prompt_id")
                ],
                e.ExpectCompoundColumnsToBeUnique(column_list=["model", "prompt_id"], **meta("schema")),
                e.ExpectColumnUniqueValueCountToBeBetween(
                    column="prompt_id", min_value=math.ceil(coverage_floor * n_validation), **meta("coverage")
                ),
            ],
        )
    )
    collected = responses.filter(pl.col("source") != "imported") if "source" in responses.columns else responses
    answers: dict[str, list] = {}
    if collected.height and {"response", "prompt_tokens", "completion_tokens"} <= set(collected.columns):
        answers = _grouped(
            _run(
                collected.with_columns(pl.col("response").fill_null("")),  # no text is an empty answer
                [
                    e.ExpectColumnValuesToBeInTypeList(column="response", type_list=TEXT, **meta("schema")),
                    *[
                        e.ExpectColumnValuesToBeInTypeList(column=c, type_list=INTEGER, **meta("schema"))
                        for c in ("prompt_tokens", "completion_tokens")
                    ],
                    e.ExpectColumnValueLengthsToBeBetween(
                        column="response", min_value=1, mostly=1 - EMPTY_RESPONSE_CEILING, **meta("empty_responses")
                    ),
                    *[
                        e.ExpectColumnValuesToBeBetween(column=c, min_value=1, **meta("token_counts"))
                        for c in ("prompt_tokens", "completion_tokens")
                    ],
                ],
            )
        )
    return {
        "schema": _outcome(
            "schema",
            True,
            whole.get("schema", []) + answers.get("schema", []),
            "columns and types as expected, one row per prompt",
        ),
        "coverage": _coverage(responses, n_validation, coverage_floor, whole.get("coverage", [])),
        "empty_responses": _empty_responses(collected.height, answers.get("empty_responses", [])),
        "token_counts": _outcome(
            "token_counts",
            False,
            answers.get("token_counts", []),
            "every collected answer reports prompt and completion tokens > 0"
            if collected.height
            else "no collected answers (imported results carry no token counts)",
        ),
    }


def _empty_responses(collected: int, results: list) -> PropertyOutcome:
    """Share of collected answers without text, against :data:`EMPTY_RESPONSE_CEILING`."""
    if not collected:
        return PropertyOutcome("empty_responses", False, True, "no collected answers (imported results carry no text)")
    failures = [_failure(r) for r in results if not r.success]
    empty = sum(r.result.get("unexpected_count") or 0 for r in results)
    share = empty / collected
    sign = ">" if failures else "<="
    message = (
        f"{_percent(share, EMPTY_RESPONSE_CEILING)} empty responses {sign} {_percent(EMPTY_RESPONSE_CEILING, share)} "
        f"allowed ({empty} of {collected} collected answers)"
    )
    numbers = {"empty_percent": round(100 * share, 2), "empty": empty, "collected": collected}
    return PropertyOutcome("empty_responses", False, not failures, message, failures, numbers)


def check_grades(
    grades: pl.DataFrame, n_validation: int, coverage_floor: float = COVERAGE_FLOOR
) -> dict[str, PropertyOutcome]:
    """One LLM's validation grades, by property, all blocking: schema (columns, a float score, one row per
    prompt), coverage, and every score present and in [0, 1]."""
    import great_expectations as gx

    e = gx.expectations

    def meta(prop: str) -> dict:
        return {"meta": {"property": prop}}

    results = _grouped(
        _run(
            grades,
            [
                *[e.ExpectColumnToExist(column=c, **meta("schema")) for c in ("model", "prompt_id", "score")],
                e.ExpectColumnValuesToBeInTypeList(column="score", type_list=FLOAT, **meta("schema")),
                e.ExpectCompoundColumnsToBeUnique(column_list=["model", "prompt_id"], **meta("schema")),
                e.ExpectColumnValuesToNotBeNull(column="score", **meta("score_range")),
                e.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1, **meta("score_range")),
                e.ExpectColumnUniqueValueCountToBeBetween(
                    column="prompt_id", min_value=math.ceil(coverage_floor * n_validation), **meta("coverage")
                ),
            ],
        )
    )
    return {
        "schema": _outcome(
            "schema", True, results.get("schema", []), "columns and types as expected, one row per prompt"
        ),
        "coverage": _coverage(grades, n_validation, coverage_floor, results.get("coverage", [])),
        "score_range": _outcome(
            "score_range", True, results.get("score_range", []), "every score present and in [0, 1]"
        ),
    }
