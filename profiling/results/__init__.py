"""Read users' existing evaluation tables into one normalised long frame: :func:`read_results`."""

from profiling.results.reader import LM_EVAL_METRICS, RESULT_COLUMNS, RESULT_SCHEMA, ResultsError, read_results

__all__ = ["LM_EVAL_METRICS", "RESULT_COLUMNS", "RESULT_SCHEMA", "ResultsError", "read_results"]
