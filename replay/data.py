"""The replay endpoint's data: recorded answers indexed by prompt text (:class:`ReplayData`), and how they load.

A prompt is identified by its text: the hash of its last user message maps to its stored id
(``<dataset>/<file id>``). Each id also keeps its category (what a substitution rule names,
:mod:`replay.substitution`) and how the project grades answers to it (what :mod:`replay.judge` applies). Data comes
from a dataset read by its adapter and rendered as the warehouse stores it
(:func:`~profiling.datasets.prepare_prompts`), or from prompts and responses already in frames or in the warehouse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

import warehouse as wh
from profiling.datasets import get_adapter, prepare_prompts
from replay.protocol import BadRequest, message_text
from router_core.embedding import prompt_hash

__all__ = ["PromptGrading", "ReplayData"]


@dataclass(frozen=True)
class PromptGrading:
    """How the project grades an answer to one prompt: its grader, the grader's options (JSON), reference, tests."""

    grader: str
    options: str | None = None
    reference: str | None = None
    tests: str | None = None


@dataclass(frozen=True)
class ReplayData:
    """Recorded answers, indexed for lookup by prompt text.

    ``prompt_ids_by_hash`` maps ``prompt_hash(last user message)`` to the stored ids of the prompts whose last user
    message it is (several prompts may share a text, e.g. MMLU-Pro's duplicate questions); ``responses`` maps
    model -> prompt id -> response; ``models`` is the order ``GET /v1/models`` lists them in; ``categories`` maps
    prompt id -> category and ``gradings`` prompt id -> :class:`PromptGrading` (for the prompts that have one).
    """

    prompt_ids_by_hash: dict[str, tuple[str, ...]]
    responses: dict[str, dict[str, str]]
    models: tuple[str, ...]
    categories: dict[str, str] = field(default_factory=dict)
    gradings: dict[str, PromptGrading] = field(default_factory=dict)

    @classmethod
    def from_frames(
        cls, prompts: pl.DataFrame, responses: pl.DataFrame, models: Sequence[str] | None = None
    ) -> ReplayData:
        """Index ``prompts`` (``prompt_id`` and ``messages``, JSON chat messages, or ``prompt``, the user turn; a
        null ``messages`` falls back to ``prompt``; optional: ``category``, and ``grader``, ``grader_options``,
        ``reference``, ``tests`` as the warehouse stores them) and ``responses`` (``model, prompt_id, response``; null
        responses skipped, responses to other prompts ignored). ``models``: default the sorted models answering."""
        require_columns(prompts, "prompts", ("prompt_id",))
        if "messages" not in prompts.columns and "prompt" not in prompts.columns:
            raise ValueError(f"prompts: needs a 'messages' or a 'prompt' column (have {prompts.columns})")
        require_columns(responses, "responses", ("model", "prompt_id", "response"))
        messages = prompts["messages"].to_list() if "messages" in prompts.columns else [None] * prompts.height
        texts = prompts["prompt"].to_list() if "prompt" in prompts.columns else [None] * prompts.height
        by_hash: dict[str, list[str]] = {}
        for prompt_id, chat, text in zip(prompts["prompt_id"].cast(pl.String).to_list(), messages, texts, strict=True):
            if prompt_id is None:
                raise ValueError("prompts: a prompt_id is null")
            by_hash.setdefault(prompt_hash(last_user_text(prompt_id, chat, text)), []).append(prompt_id)
        prompt_ids_by_hash = {key: tuple(sorted(ids)) for key, ids in by_hash.items()}

        known = {prompt_id for ids in prompt_ids_by_hash.values() for prompt_id in ids}
        recorded = responses.select("model", pl.col("prompt_id").cast(pl.String), "response").filter(
            pl.col("response").is_not_null()
        )
        served = recorded.filter(pl.col("prompt_id").is_in(list(known)))
        if recorded.height and not served.height:
            example = recorded["prompt_id"][0]
            raise ValueError(
                f"responses: none of their {recorded.height} prompt ids is a prompt's (e.g. {example!r}; "
                f"prompts have ids like {next(iter(sorted(known)), None)!r})"
            )
        answers = {
            model: dict(zip(part["prompt_id"].to_list(), part["response"].to_list(), strict=True))
            for (model,), part in served.partition_by("model", as_dict=True, maintain_order=True).items()
        }
        order = tuple(dict.fromkeys(models)) if models is not None else tuple(sorted(answers))
        return cls(prompt_ids_by_hash, answers, order, _categories(prompts), _gradings(prompts))

    @classmethod
    def from_dataset(
        cls,
        path: str | os.PathLike[str],
        adapter: str | None = None,
        dataset: str | None = None,
        responses: str | os.PathLike[str] | None = None,
    ) -> ReplayData:
        """Read a dataset with its adapter, render it as the warehouse stores it, and serve its recorded answers.

        ``adapter``: default ``mmlu_pro`` for a directory holding ``questions.parquet``, else ``prompts`` (a prompt
        file). ``dataset``: the name prefixing stored ids (``<dataset>/<file id>``); default the adapter's name for
        a directory, the file's stem for a file. ``responses``: a Parquet/CSV/JSONL file of ``model, prompt_id,
        response`` (the file's ids); default the answers recorded with the dataset. Models are listed in the order
        of the directory's ``models.csv`` where it has one, then sorted.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"replay data: {path} not found")
        if adapter is None:
            adapter = "mmlu_pro" if (path / "questions.parquet").is_file() else "prompts"
        reader = get_adapter(adapter)
        if dataset is None:
            dataset = reader.name if path.is_dir() else path.stem
        rows, spec = reader.load(path)
        prompts = prepare_prompts(dataset, rows, spec)
        recorded = _read_responses(Path(responses)) if responses is not None else reader.recorded_responses(path)
        if recorded is None:
            raise ValueError(f"replay data: {adapter} dataset {path} has no recorded responses; pass responses=FILE")
        require_columns(recorded, "responses", ("model", "prompt_id", "response"))
        recorded = recorded.with_columns(
            (pl.lit(f"{dataset}/") + pl.col("prompt_id").cast(pl.String)).alias("prompt_id")
        )
        answered = recorded.filter(pl.col("response").is_not_null())["model"].unique().sort().to_list()
        listed = path / "models.csv"
        if path.is_dir() and listed.is_file():
            order = pl.read_csv(listed, columns=["model"])["model"].to_list()
            models = (*order, *(m for m in answered if m not in order))
        else:
            models = answered
        return cls.from_frames(prompts, recorded, models)

    @classmethod
    def from_warehouse(
        cls, con: duckdb.DuckDBPyConnection, responses: pl.DataFrame, models: Sequence[str] | None = None
    ) -> ReplayData:
        """The warehouse's prompts (as sent: their stored messages) answered with ``responses`` (stored ids)."""
        return cls.from_frames(wh.read_prompts(con), responses, models)

    @property
    def n_prompts(self) -> int:
        return sum(len(ids) for ids in self.prompt_ids_by_hash.values())

    @property
    def n_responses(self) -> int:
        return sum(len(answers) for answers in self.responses.values())

    def known_categories(self) -> list[str]:
        """The prompts' categories, sorted."""
        return sorted(set(self.categories.values()))


def _categories(prompts: pl.DataFrame) -> dict[str, str]:
    """prompt id -> category, for the prompts that have one."""
    if "category" not in prompts.columns:
        return {}
    rows = prompts.select(pl.col("prompt_id").cast(pl.String), pl.col("category").cast(pl.String))
    return dict(rows.drop_nulls().iter_rows())


def _gradings(prompts: pl.DataFrame) -> dict[str, PromptGrading]:
    """prompt id -> how its answers are graded, for the prompts that name a grader."""
    if "grader" not in prompts.columns:
        return {}
    columns = [
        pl.col(c).cast(pl.String) if c in prompts.columns else pl.lit(None, pl.String).alias(c)
        for c in ("grader_options", "reference", "tests")
    ]
    rows = prompts.select(pl.col("prompt_id").cast(pl.String), pl.col("grader"), *columns)
    return {
        prompt_id: PromptGrading(grader, options, reference, tests)
        for prompt_id, grader, options, reference, tests in rows.filter(pl.col("grader").is_not_null()).iter_rows()
    }


def require_columns(frame: pl.DataFrame, name: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing} (have {frame.columns})")


def last_user_text(prompt_id: str, messages: str | None, prompt: str | None) -> str:
    """What identifies a prompt: its last user message (``messages``, JSON), else ``prompt``; ``ValueError`` naming
    ``prompt_id`` and the problem."""
    where = f"prompts: prompt_id={prompt_id!r}"
    if messages is None:
        if prompt is None:
            raise ValueError(f"{where}: neither messages nor prompt is given")
        return prompt
    try:
        chat = json.loads(messages)
    except ValueError:
        raise ValueError(f"{where}: messages={messages!r:.80}: not valid JSON") from None
    users = [m for m in chat if isinstance(m, dict) and m.get("role") == "user"] if isinstance(chat, list) else []
    if not users:
        raise ValueError(f"{where}: messages={messages!r:.80}: no message with role 'user'")
    try:
        return message_text(users[-1].get("content"), "content")
    except BadRequest as exc:
        raise ValueError(f"{where}: messages: {exc}") from None


def _read_responses(path: Path) -> pl.DataFrame:
    """A responses file: Parquet, CSV or JSONL with ``model, prompt_id, response`` (ids as in the prompt file)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"responses: {path} not found")
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix == ".csv":
        return pl.read_csv(path, infer_schema=False)  # ids and answers stay text ("007" is not 7)
    if suffix in (".jsonl", ".ndjson"):
        return pl.read_ndjson(path)
    raise ValueError(f"responses: {path}: unsupported format {suffix!r}; use .parquet, .csv or .jsonl")
