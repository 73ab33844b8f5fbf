"""Prompt sets of any dataset: one file format, a spec of how its prompts are rendered, and one writer.

A prompt file (JSONL, CSV or Parquet) has one row per prompt:

============== =========================================================================================
prompt_id      required; unique in the file (stored as ``<dataset>/<prompt_id>``)
prompt         the prompt's text, or
messages       chat messages (a JSON list of ``{"role", "content"}``); the last user message is the prompt
reference      the reference answer (optional where the grader needs none, e.g. ``llm_judge``, ``code``)
grader         a registered grader (``uniroute graders``); default: the spec's ``grader``
grader_options a JSON object of that grader's options; default: the spec's ``grader_options``
category       optional; assigned splits are stratified by it
split          optional: ``train`` / ``validation`` / ``test``; rows without one are assigned
tests          optional: code the answer is run against (``code`` grader)
any other      free metadata, kept as JSON and usable in the template as ``{column}``
============== =========================================================================================

A :class:`DatasetSpec` (YAML or JSON, ``uniroute import-prompts --spec``) says how the prompts are sent and what
the router embeds; it is stored with the dataset, and each answer records the request it answered, so a changed
template makes earlier answers stale (they are archived and asked again). Importing is all or nothing: every bad
row is named and nothing is written. A stored prompt never changes split.

Adapters turn other layouts into this one (:func:`get_adapter`): ``prompts`` (the format above) and
``mmlu_pro`` (the layout of ``../shared/data/mmlu_pro``); more come from the entry point group
``uniroute.datasets`` (a class with ``name``, ``load(path) -> (rows, spec)`` and
``recorded_responses(path) -> frame | None``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import warehouse as wh
from profiling import graders
from profiling.prompt_files import PromptSetError, normalise_rows, read_prompt_file, render, request_hash
from profiling.rendering import render_mmlu_pro, router_input
from router_core import prompt_hash
from warehouse.userfiles import UserFileError, load_user_yaml

__all__ = [
    "ADAPTER_GROUP",
    "DEFAULT_SHARES",
    "IMPORTED_GRADER",
    "DatasetAdapter",
    "DatasetSpec",
    "PromptSetError",
    "adapter_names",
    "detect_adapter",
    "get_adapter",
    "import_dataset",
    "load_spec",
    "prepare_prompts",
    "read_prompt_file",
    "render",
    "stratified_sample",
    "write_prompt_set",
]

ADAPTER_GROUP = "uniroute.datasets"
#: The grader of results-only prompts: their imported scores are kept as they are, never regraded.
IMPORTED_GRADER = "imported"
DEFAULT_SHARES = {"train": 0.6, "validation": 0.1, "test": 0.3}
SPLITS = ("train", "validation", "test")


class DatasetSpec(BaseModel):
    """How a dataset's prompts are rendered and sent, what the router embeds, and how prompts are split."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str | None = None
    #: The user turn: ``{prompt}`` and any column of the file, e.g. ``"Question: {question}\nAnswer:"``.
    template: str = "{prompt}"
    #: Examples sent before the prompt as user / assistant turns, verbatim: ``[{prompt, answer}]``.
    few_shot: list[dict[str, str]] = Field(default_factory=list)
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    stop: list[str] | None = None
    #: What the router embeds: ``prompt`` (the file's prompt), ``rendered`` (the user turn as sent),
    #: ``field:<column>``, or ``last:<N>`` (the prompt's last N characters, past a long few-shot prefix).
    router_text: str = "prompt"
    grader: str | None = None
    grader_options: dict[str, Any] = Field(default_factory=dict)
    #: False: results only (imported); its prompts are never sent to an endpoint.
    collectable: bool = True
    shares: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SHARES))
    seed: int = 0

    @field_validator("router_text")
    @classmethod
    def _router_text(cls, value: str) -> str:
        kind, _, arg = value.partition(":")
        if value in ("prompt", "rendered") or (kind == "field" and arg) or (kind == "last" and arg.isdigit()):
            if kind == "last" and int(arg) <= 0:
                raise ValueError(f"router_text={value!r}: N must be > 0")
            return value
        raise ValueError(f"router_text={value!r}: expected prompt, rendered, field:<column> or last:<N>")

    @field_validator("few_shot")
    @classmethod
    def _few_shot(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, shot in enumerate(value):
            if set(shot) != {"prompt", "answer"}:
                raise ValueError(f"few_shot[{i}]: expected keys prompt and answer, got {sorted(shot)}")
        return value

    @field_validator("shares")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) - set(SPLITS) or abs(sum(value.values()) - 1) > 1e-9 or min(value.values(), default=0) < 0:
            raise ValueError(f"shares={value}: non-negative shares of {SPLITS} summing to 1")
        return value

    def request_params(self) -> dict[str, Any]:
        """The request's parameters besides the messages (what is recorded with each answer)."""
        params: dict[str, Any] = {"temperature": self.temperature}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.stop:
            params["stop"] = list(self.stop)
        return params

    def template_version(self) -> str:
        """A hash of everything that changes the requests sent (not the router text, grader or splits)."""
        parts = [self.system_prompt, self.template, self.few_shot, self.request_params()]
        return prompt_hash(json.dumps(parts, sort_keys=True))[:12]


def load_spec(source: str | os.PathLike[str] | Mapping[str, Any] | None, **overrides: Any) -> DatasetSpec:
    """A spec from a YAML/JSON file or a mapping, with ``overrides`` (None values ignored) on top."""
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise PromptSetError(f"spec={str(path)!r}: file not found")
        try:
            raw = load_user_yaml(path) or {}
        except UserFileError as exc:
            raise PromptSetError(f"spec={str(path)!r}: {exc.problem}") from None
        if not isinstance(raw, dict):
            raise PromptSetError(f"spec={str(path)!r}: expected a mapping of settings")
    raw |= {k: v for k, v in overrides.items() if v is not None}
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "spec"
        raise PromptSetError(f"spec.{field}={err.get('input')!r}: {err['msg']}") from None


# ---- splits ------------------------------------------------------------------------------------------------
def _assign_splits(frame: pl.DataFrame, shares: Mapping[str, float], seed: int) -> pl.Series:
    """Splits for rows without one, stratified by category: within each category the rows are ordered by a seeded
    hash of the prompt id (so a row's draw does not depend on the file's order), the categories are interleaved by
    that order, and the whole is cut by ``shares``. Each split gets its share of the whole (a category of 4
    prompts cut alone would give validation none of them) and of each category, give or take one prompt."""
    key = pl.col("prompt_id").map_elements(lambda i: prompt_hash(f"{seed}:{i}"), return_dtype=pl.String)
    group = pl.col("category").fill_null("")
    keyed = frame.select(key.alias("key"), group.alias("group")).with_row_index("row")
    keyed = keyed.with_columns(((pl.col("key").rank("ordinal").over("group") - 1) / pl.len().over("group")).alias("at"))
    position = keyed.sort("at", "key").select("row", (pl.int_range(pl.len()) / pl.len()).alias("position"))
    names = [n for n in SPLITS if n in shares]
    split = pl.lit(names[-1])
    edges = []
    total = 0.0
    for name in names[:-1]:
        total += shares[name]
        edges.append((name, total))
    for name, edge in reversed(edges):
        split = pl.when(pl.col("position") < edge).then(pl.lit(name)).otherwise(split)
    return position.sort("row").select(split.alias("split"), "position")["split"]  # one row per row, always


def stratified_sample(prompts: pl.DataFrame, n: int, seed: int, by: str = "category") -> pl.DataFrame:
    """About ``n`` rows of ``prompts`` with the strata (``by``) in their original proportions."""
    if n >= prompts.height:
        return prompts
    frac = n / prompts.height
    rank = pl.int_range(pl.len()).shuffle(seed=seed).over(by)
    keep = (pl.len().over(by) * frac).round().cast(pl.Int64).clip(lower_bound=1)
    return prompts.filter(rank < keep)


# ---- checking and writing ----------------------------------------------------------------------------------
def prepare_prompts(
    dataset: str, rows: pl.DataFrame, spec: DatasetSpec, stored_splits: Mapping[str, str] | None = None
) -> pl.DataFrame:
    """The warehouse's prompts frame for ``rows`` (file format): rendered, graders checked, splits kept or
    assigned. Raises :class:`PromptSetError` naming the first bad row, field and value."""
    if not isinstance(dataset, str) or not dataset.strip() or "/" in dataset:
        raise PromptSetError(f"dataset={dataset!r}: must be a non-empty name without '/'")
    if rows.height == 0:
        raise PromptSetError(f"dataset {dataset!r}: the prompt file has no rows")
    if (null_ids := rows.filter(pl.col("prompt_id").is_null() | (pl.col("prompt_id").str.strip_chars() == ""))).height:
        raise PromptSetError(f"row {rows['prompt_id'].to_list().index(null_ids['prompt_id'][0])}: prompt_id is empty")
    rows = rows.unique(maintain_order=True)  # identical duplicates are one prompt
    if (dup := rows.filter(pl.col("prompt_id").is_duplicated())).height:
        first = dup["prompt_id"][0]
        times = dup.filter(pl.col("prompt_id") == first).height
        raise PromptSetError(f"prompt_id={first!r}: appears {times} times with different contents")
    stored_splits = stored_splits or {}
    params = spec.request_params()
    out = []
    for row in rows.iter_rows(named=True):
        where = f"prompt_id={row['prompt_id']!r}"
        stored_id = f"{dataset}/{row['prompt_id']}"
        if row["split"] is not None and row["split"] not in SPLITS:
            raise PromptSetError(f"{where}: split={row['split']!r}: must be one of {SPLITS}")
        if row["split"] is not None and stored_id in stored_splits and stored_splits[stored_id] != row["split"]:
            raise PromptSetError(
                f"{where}: split={row['split']!r}: it is stored as {stored_splits[stored_id]!r} and splits never move"
            )
        messages, user, text = render(spec, row, where)
        options = json.loads(row["grader_options"]) if row["grader_options"] else spec.grader_options
        if not isinstance(options, dict):
            raise PromptSetError(f"{where}: grader_options={row['grader_options']!r}: expected a JSON object")
        out.append(
            {
                "prompt_id": stored_id,
                "dataset": dataset,
                "split": stored_splits.get(stored_id, row["split"]),
                "category": row["category"],
                "text": text,
                "prompt": user,
                "reference": row["reference"],
                "grader": row["grader"] or spec.grader,
                "content_hash": prompt_hash(text),
                "messages": json.dumps(messages),
                "request_params": json.dumps(params, sort_keys=True),
                "request_hash": request_hash(messages, params),
                "grader_options": json.dumps(options, sort_keys=True) if options else None,
                "tests": row["tests"],
                "metadata": row["metadata"],
            }
        )
    prompts = pl.DataFrame(out, schema_overrides=dict.fromkeys(("split", "category", "reference", "tests"), pl.String))
    _check_graders(prompts, spec.collectable)
    todo = prompts.filter(pl.col("split").is_null())
    if todo.height:  # only prompts with neither a stored split nor one of the user's are assigned
        assigned = todo.select("prompt_id").with_columns(
            _assign_splits(todo, spec.shares, spec.seed).alias("_assigned")
        )
        prompts = (
            prompts.join(assigned, on="prompt_id", how="left")
            .with_columns(pl.coalesce("split", "_assigned").alias("split"))
            .drop("_assigned")
        )
    return prompts


def _check_graders(prompts: pl.DataFrame, collectable: bool) -> None:
    """Unknown graders, bad options, and references or tests a grader cannot use are refused at import; the
    ``imported`` grader only names the scores of a results-only dataset (nothing to grade)."""
    if (missing := prompts.filter(pl.col("grader").is_null())).height:
        raise PromptSetError(
            f"prompt_id={missing['prompt_id'][0]!r}: grader is missing (give a grader column or the spec's grader)"
        )
    for (name, options), group in prompts.group_by("grader", "grader_options", maintain_order=True):
        if name == IMPORTED_GRADER and not collectable:
            continue
        try:
            graders.validate_grader(
                name, json.loads(options) if options else None, group["reference"].to_list(), group["tests"].to_list()
            )
        except ValueError as exc:
            raise PromptSetError(
                f"grader={name!r} ({group.height} prompts, first {group['prompt_id'][0]!r}): {exc}"
            ) from None


def write_prompt_set(
    con: duckdb.DuckDBPyConnection, dataset: str, rows: pl.DataFrame, spec: DatasetSpec, source: str | None = None
) -> pl.DataFrame:
    """Check, render and store ``rows`` (file format) as ``dataset``, with its spec: the one way prompts enter the
    warehouse. All rows are checked before anything is written. Returns the stored prompts."""
    ids = [f"{dataset}/{i}" for i in rows["prompt_id"].to_list()]
    prompts = prepare_prompts(dataset, rows, spec, wh.read_splits(con, ids))
    row = {
        "name": dataset,
        "spec": spec.model_dump_json(),
        "template_version": spec.template_version(),
        "collectable": spec.collectable,
        "source": source,
    }
    wh.upsert_dataset(con, pl.DataFrame([row]))
    wh.upsert_prompts(con, prompts)
    return wh.read_prompts(con, dataset=dataset).filter(pl.col("prompt_id").is_in(prompts["prompt_id"].to_list()))


# ---- adapters ----------------------------------------------------------------------------------------------
class DatasetAdapter(Protocol):
    """Turns a dataset's own layout into prompt rows (the file format) and a default spec."""

    name: str

    def load(self, path: Path) -> tuple[pl.DataFrame, DatasetSpec]:
        """Prompt rows (file format) and the dataset's default spec."""

    def recorded_responses(self, path: Path) -> pl.DataFrame | None:
        """Answers recorded with the dataset (``model, prompt_id, response``; the file's ids), if any."""


class PromptFileAdapter:
    """The documented prompt file format (JSONL, CSV, Parquet); no recorded answers."""

    name = "prompts"

    def load(self, path: Path) -> tuple[pl.DataFrame, DatasetSpec]:
        return read_prompt_file(path), DatasetSpec()

    def recorded_responses(self, path: Path) -> pl.DataFrame | None:
        return None


_MMLU_PRO_TEMPLATE = render_mmlu_pro("{question}", [], "{category}").replace("Options:\n", "Options:\n{options}\n")


class MMLUProAdapter:
    """A directory in the layout of ``../shared/data/mmlu_pro``: ``questions.parquet`` (question_id, question,
    options, answer, category) and, for the replay endpoint, ``responses.parquet`` (model, question_id, response).
    The router sees the question and its lettered options; the LLM is asked MMLU-Pro's chain-of-thought prompt."""

    name = "mmlu_pro"

    def load(self, path: Path) -> tuple[pl.DataFrame, DatasetSpec]:
        file = Path(path) / "questions.parquet"
        if not file.exists():
            raise PromptSetError(f"path={str(path)!r}: no questions.parquet (the mmlu_pro layout)")
        questions = pl.read_parquet(file, columns=["question_id", "question", "options", "answer", "category"])
        rows = pl.DataFrame(
            {
                "prompt_id": questions["question_id"].cast(pl.String),
                "prompt": [
                    router_input(q, o) for q, o in zip(questions["question"], questions["options"], strict=True)
                ],
                "reference": questions["answer"],
                "category": questions["category"],
                "question": [q.strip() for q in questions["question"]],
                "options": [
                    "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(opts)) for opts in questions["options"]
                ],
            }
        )
        spec = DatasetSpec(template=_MMLU_PRO_TEMPLATE, grader="mmlu_pro_letter")
        return normalise_rows(rows, file.name), spec

    def recorded_responses(self, path: Path) -> pl.DataFrame | None:
        file = Path(path) / "responses.parquet"
        if not file.exists():
            return None
        recorded = pl.read_parquet(file, columns=["model", "question_id", "response"])
        return recorded.select("model", pl.col("question_id").cast(pl.String).alias("prompt_id"), "response")


_BUILT_IN: dict[str, type] = {PromptFileAdapter.name: PromptFileAdapter, MMLUProAdapter.name: MMLUProAdapter}


def _registry() -> dict[str, Any]:
    found = dict(_BUILT_IN)
    for point in entry_points(group=ADAPTER_GROUP):
        if point.name in _BUILT_IN:
            raise PromptSetError(f"entry point {point.value!r}: adapter name {point.name!r} is built in")
        found[point.name] = point
    return found


def adapter_names() -> list[str]:
    """Known adapters: built in and from the ``uniroute.datasets`` entry points."""
    return sorted(_registry())


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter called ``name``; :class:`PromptSetError` naming the known ones otherwise."""
    found = _registry().get(name)
    if found is None:
        raise PromptSetError(f"adapter={name!r}: unknown; known adapters: {', '.join(adapter_names())}")
    adapter_class = found if isinstance(found, type) else found.load()  # built in, or an entry point
    return adapter_class()


def detect_adapter(path: str | os.PathLike[str]) -> str:
    """``mmlu_pro`` for a directory holding ``questions.parquet``, else ``prompts`` (a prompt file)."""
    return MMLUProAdapter.name if (Path(path) / "questions.parquet").is_file() else PromptFileAdapter.name


def import_dataset(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike[str],
    dataset: str,
    adapter: str = "prompts",
    spec: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    sample: int | None = None,
    **overrides: Any,
) -> pl.DataFrame:
    """Read ``path`` with ``adapter`` and store it as ``dataset``: the adapter's spec, then ``spec`` (a file or a
    mapping), then ``overrides`` on top. ``sample`` keeps a stratified sample of about that many prompts."""
    rows, default = get_adapter(adapter).load(Path(path))
    base = default.model_dump(exclude_unset=True) | (load_spec(spec).model_dump(exclude_unset=True) if spec else {})
    merged = load_spec(base, **overrides)
    if sample is not None:
        rows = stratified_sample(rows.with_columns(pl.col("category").fill_null("")), sample, merged.seed)
    return write_prompt_set(con, dataset, rows, merged, source=str(path))
