"""Read users' existing evaluation tables into one normalised long frame (parsing only: nothing is written).

:func:`read_results` returns one row per (model, prompt_id) with the columns of :data:`RESULT_SCHEMA`, sorted by
model and prompt_id, or raises :class:`ResultsError`, whose one-line message names the file, the column, the
first bad row (its model and prompt_id) and the value.

Formats (``format="auto"`` tries them in this order):

- **lm-eval**: the ``--log_samples`` output of lm-evaluation-harness, a ``samples_<task>_<timestamp>.jsonl`` file
  or a directory of them (or of one folder per model holding them). Picked for a directory, for a JSONL file named
  ``samples_*`` and for a JSONL file whose first record has ``doc_id`` and ``arguments`` or ``resps``.
  prompt_id is ``<task>/<doc_id>`` (task from a record's ``task`` key, else from the file name), category the
  task, prompt the context string of ``arguments`` (old list and new ``gen_args_0`` shapes), response the first
  string of ``resps`` (``filtered_resps`` when absent; none for log-likelihood pairs), reference ``target``. The
  score is ``score_field`` (``"metric"`` or lm-eval's own ``"metric,filter"``), else the first present of
  :data:`LM_EVAL_METRICS`; with several filters, the first one in the file unless ``score_field`` names one. The
  model is ``model=``, else the ``model_name`` or ``config.model_args`` ``pretrained=`` of the ``results_*.json``
  beside the samples (the one with the same timestamp when there are several).
- **long** (Parquet, CSV, JSONL/NDJSON): a ``model`` column, or none and ``model=`` given. Aliases, used when the
  canonical column is absent, first match wins: prompt_id <- ``question_id``, ``sample_id``, ``id``;
  score <- ``correct``; cost_usd <- ``cost``; input_tokens <- ``prompt_tokens``; output_tokens <-
  ``completion_tokens``. ``score_field`` names another score column.
- **wide** (Parquet, CSV), as RouterBench publishes it: picked when there is no ``model`` column and some column
  ``<m>|...`` has a numeric column ``<m>`` beside it, or a ``<m>|total_cost`` or ``<m>|model_response`` column
  exists. One row per prompt: ``sample_id`` (or a prompt_id alias), ``prompt`` (a list of strings, or one
  stringified as ``"['...']"``, is joined with newlines), optional ``eval_name`` (the category), then per model
  ``<m>`` (score), ``<m>|model_response`` and ``<m>|total_cost`` (USD per query); other columns are ignored. With
  ``format="wide"`` and no ``<m>|...`` columns, every other numeric column is a model's score.

Scores may be booleans or 0/1; costs and token counts are finite and not negative (NaN and infinity are refused);
split values are train/validation/test (``val``, ``valid``, ``dev`` read as validation). Rows repeated identically
are dropped; a prompt_id must keep one prompt, category, reference and split across models.
"""

from profiling.results.common import MAX_TOKENS, RESULT_COLUMNS, RESULT_SCHEMA, ResultsError
from profiling.results.lm_eval import LM_EVAL_METRICS
from profiling.results.reader import FORMATS, read_results

__all__ = [
    "FORMATS",
    "LM_EVAL_METRICS",
    "MAX_TOKENS",
    "RESULT_COLUMNS",
    "RESULT_SCHEMA",
    "ResultsError",
    "read_results",
]
