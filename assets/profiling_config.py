"""The profiling assets' run config: the catalog, the prompt set, imported results, profiling (with a new LLM's
onboarding) and grading."""

# Dagster resolves config types from annotations at import: no `from __future__ import annotations`.

from datetime import datetime
from pathlib import Path

import dagster as dg

from assets.expectations import COVERAGE_FLOOR
from profiling.datasets import detect_adapter
from router_core.onboarding import DEFAULT_ONBOARDING_FRACTION


class OnboardingConfig(dg.Config):
    """A new LLM's first profiling run asks only the first ``fraction`` of the validation prompts in the planner's
    order (default ``router_core.onboarding.DEFAULT_ONBOARDING_FRACTION``, 0.5; 1.0: all of them at once); later
    runs ask the rest. ``budget_usd``: USD its profile may cost at most (its stored answers count; None: no
    budget); the collector stops before passing it."""

    fraction: float = DEFAULT_ONBOARDING_FRACTION
    budget_usd: float | None = None


class CatalogConfig(dg.Config):
    """Where the user-edited catalog lives (default: the warehouse resource's ``catalog_path``)."""

    path: str = ""


class PromptSetConfig(dg.Config):
    """The dataset: imported from ``path`` (any adapter's layout) when given, else one already registered by
    ``uniroute import-prompts``, which is then only summarised."""

    path: str = ""
    dataset: str = ""  # default: the adapter's name for a directory (e.g. mmlu_pro), the file's stem for a file
    adapter: str = ""  # default: mmlu_pro for a directory holding questions.parquet, else prompts (a prompt file)
    spec: dict | None = None  # DatasetSpec settings over the adapter's (template, max_tokens, router_text, ...)
    seed: int | None = None  # of the assigned splits (stratified by category); stored splits never move
    sample: int | None = None  # a stratified sample of about N prompts; None: all
    shares: dict[str, float] | None = None  # e.g. {"train": 0.6, "validation": 0.1, "test": 0.3} (the default)

    def dataset_name(self) -> str:
        if self.dataset:
            return self.dataset
        if not self.path:
            raise dg.Failure("prompt_set.config: give a path to import, or the dataset of an earlier import")
        path = Path(self.path)
        return detect_adapter(path) if path.is_dir() else path.stem


class ResultsConfig(dg.Config):
    """An evaluation table to import (``uniroute import-results``): long, wide (RouterBench) or lm-eval samples."""

    path: str
    dataset: str
    format: str = "auto"
    model: str | None = None  # lm-eval samples without a results_*.json beside them
    score_field: str | None = None
    catalog: str = ""  # where new LLMs are appended as import-only entries; default the warehouse resource's
    models: list[str] | None = None  # only these LLMs of the table (default all)
    exclude_models: list[str] | None = None
    rename: dict[str, str] | None = None  # the table's LLM name -> the name to store it under
    price_file: str | None = None  # prices of LLMs the table does not cost (model + usd_per_query or per Mtok)
    replace: bool = False  # archive stored answers the file changes and store the file's


class ProfilingConfig(dg.Config):
    """Which prompt splits an LLM answers, and the coverage floor of its data checks."""

    # validation: every LLM; test: the evaluation pool (routers are scored there); add "train" for training LLMs
    splits: list[str] = ["validation", "test"]  # noqa: RUF012 - pydantic copies field defaults
    coverage_floor: float = COVERAGE_FLOOR
    # Re-profile: answers collected before this UTC time (ISO 8601) are archived and asked again, and the
    # features' drift check compares the two profiles. A re-run with the same value asks nothing twice.
    refresh_before: str | None = None
    onboarding: OnboardingConfig = OnboardingConfig()

    def refresh_time(self) -> datetime | None:
        if self.refresh_before is None:
            return None
        try:
            return datetime.fromisoformat(self.refresh_before)  # naive: UTC
        except ValueError:
            raise dg.Failure(f"llm_responses.config.refresh_before={self.refresh_before!r}: not ISO 8601") from None


class GradingConfig(dg.Config):
    """The coverage floor of the grades' data check."""

    coverage_floor: float = COVERAGE_FLOOR
