"""Great Expectations suites for the per-LLM tables, in code, run in an ephemeral context (no gx/ folder)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import polars as pl

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # configured before great_expectations is imported

#: Default floors, overridable per run through the assets' config.
COVERAGE_FLOOR = 0.98
EMPTY_RESPONSE_CEILING = 0.01
# Type names as Great Expectations sees pandas columns (dtype names, or Python types of object values).
TEXT = ["str", "object", "string"]
INTEGER = ["int", "int32", "int64", "Int32", "Int64"]
FLOAT = ["float", "float32", "float64", "Float64"]


@dataclass(frozen=True)
class CheckOutcome:
    """Whether a frame met its suite, and for each failed expectation its name, column and sample values."""

    passed: bool
    failures: list[dict]

    def details(self) -> str:
        return json.dumps(self.failures, default=str)


def _run(frame: pl.DataFrame, expectations: list) -> CheckOutcome:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("warehouse")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    )
    suite = gx.ExpectationSuite(name="suite", expectations=expectations)
    result = batch.validate(suite)
    failures = [
        {
            "expectation": r.expectation_config.type,
            "kwargs": {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"},
            "observed": r.result.get("observed_value"),
            "sample": (r.result.get("partial_unexpected_list") or [])[:5],
        }
        for r in result.results
        if not r.success
    ]
    return CheckOutcome(passed=bool(result.success), failures=failures)


def check_responses(responses: pl.DataFrame, n_validation: int, coverage_floor: float = COVERAGE_FLOOR) -> CheckOutcome:
    """One LLM's validation responses: schema, one row per prompt, coverage; collected answers also have text
    and token counts > 0 (imported results may carry neither: their scores came with them)."""
    import great_expectations as gx

    e = gx.expectations
    whole = _run(
        responses,
        [
            *[e.ExpectColumnToExist(column=c) for c in ("model", "prompt_id", "response", "prompt_tokens")],
            *[e.ExpectColumnValuesToBeInTypeList(column=c, type_list=TEXT) for c in ("model", "prompt_id")],
            e.ExpectCompoundColumnsToBeUnique(column_list=["model", "prompt_id"]),
            e.ExpectTableRowCountToBeBetween(min_value=math.ceil(coverage_floor * n_validation), max_value=None),
        ],
    )
    collected = responses.filter(pl.col("source") != "imported") if "source" in responses.columns else responses
    if collected.height == 0:
        return whole
    answers = _run(
        collected,
        [
            e.ExpectColumnValuesToBeInTypeList(column="response", type_list=TEXT),
            *[
                e.ExpectColumnValuesToBeInTypeList(column=c, type_list=INTEGER)
                for c in ("prompt_tokens", "completion_tokens")
            ],
            e.ExpectColumnValueLengthsToBeBetween(column="response", min_value=1, mostly=1 - EMPTY_RESPONSE_CEILING),
            e.ExpectColumnValuesToBeBetween(column="prompt_tokens", min_value=1),
            e.ExpectColumnValuesToBeBetween(column="completion_tokens", min_value=1),
        ],
    )
    return CheckOutcome(passed=whole.passed and answers.passed, failures=whole.failures + answers.failures)


def check_grades(grades: pl.DataFrame, n_validation: int, coverage_floor: float = COVERAGE_FLOOR) -> CheckOutcome:
    """One LLM's validation grades: one row per prompt, scores in [0, 1], coverage."""
    import great_expectations as gx

    e = gx.expectations
    return _run(
        grades,
        [
            *[e.ExpectColumnToExist(column=c) for c in ("model", "prompt_id", "score")],
            e.ExpectColumnValuesToBeInTypeList(column="score", type_list=FLOAT),
            e.ExpectCompoundColumnsToBeUnique(column_list=["model", "prompt_id"]),
            e.ExpectColumnValuesToNotBeNull(column="score"),
            e.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1),
            e.ExpectTableRowCountToBeBetween(min_value=math.ceil(coverage_floor * n_validation), max_value=None),
        ],
    )
