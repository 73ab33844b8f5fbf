"""Bring prompts and existing results into the warehouse instead of re-collecting them.

- :func:`import_mmlu_pro`: the prompts of a dataset in the layout of ``../shared/data/mmlu_pro``, through the
  ``mmlu_pro`` adapter of :mod:`profiling.datasets` (the general path is :func:`profiling.datasets.import_dataset`).
- :func:`import_results`: evaluation results users already have (long tables, RouterBench-style wide tables,
  lm-evaluation-harness ``--log_samples``; :mod:`profiling.results`) as imported answers and grades, with their
  per-query costs. Their LLMs join the catalog as import-only entries (no endpoint) and count as profiled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from pydantic import ValidationError

import warehouse as wh
from profiling.datasets import (
    IMPORTED_GRADER,
    DatasetSpec,
    PromptSetError,
    load_spec,
    normalise_rows,
    prepare_prompts,
    stratified_sample,
    write_prompt_set,
)
from profiling.datasets import import_dataset as _import_dataset
from profiling.results import read_results
from router_core import DEFAULT_EMBEDDER, count_tokens, prompt_hash
from warehouse import LLMEntry
from warehouse.userfiles import UserFileError, check_size, load_user_yaml

__all__ = [
    "IMPORTED_GRADER",
    "PRICE_FIELDS",
    "ImportReport",
    "import_mmlu_pro",
    "import_results",
    "read_price_file",
    "stratified_sample",
]


def import_mmlu_pro(
    con: duckdb.DuckDBPyConnection,
    data_dir: str | os.PathLike[str],
    seed: int = 0,
    shares: dict[str, float] | None = None,
    question_ids: list[int] | None = None,
    sample: int | None = None,
) -> pl.DataFrame:
    """Store the questions of an MMLU-Pro-layout directory as dataset ``mmlu_pro`` (prompts ``mmlu_pro/<id>``).

    ``question_ids`` restricts the import; ``sample`` keeps a stratified sample of about that many questions.
    Splits are drawn once per prompt (stratified by category, ``seed``) and never move. Returns the prompts.
    """
    if question_ids is None:
        return _import_dataset(con, data_dir, "mmlu_pro", "mmlu_pro", sample=sample, seed=seed, shares=shares)
    from profiling.datasets import get_adapter

    rows, spec = get_adapter("mmlu_pro").load(Path(data_dir))
    rows = rows.filter(pl.col("prompt_id").is_in([str(q) for q in question_ids]))
    spec = load_spec(spec.model_dump(exclude_unset=True), seed=seed, shares=shares)
    return write_prompt_set(con, "mmlu_pro", rows, spec, source=str(data_dir))


#: The price columns of a price file (``import_results(price_file=...)``) and of a catalog entry.
PRICE_FIELDS = ("usd_per_query", "usd_per_mtok_in", "usd_per_mtok_out")
#: What an answer's stored values are compared on when a re-import finds it stored already.
_COMPARED = ("response", "prompt_tokens", "completion_tokens", "cost_usd", "score")


@dataclass
class ImportReport:
    """What an import of results did. ``answers_stored`` counts the answers written (new ones, and those replacing
    archived ones: ``replaced``); ``already_stored`` those stored before and left as they were (the same in the
    file, or answered by an endpoint); ``differing`` those stored before that the file changes (cost, tokens,
    response or score), kept: ``replace=True`` archives and replaces them."""

    dataset: str
    prompts_added: int = 0
    answers_stored: int = 0
    already_stored: int = 0
    differing: int = 0
    replaced: int = 0
    grades_written: int = 0
    models: list[str] = field(default_factory=list)
    models_added_to_catalog: list[str] = field(default_factory=list)
    models_priced: list[str] = field(default_factory=list)
    with_cost: int = 0
    tokens_estimated: int = 0


def import_results(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike[str],
    dataset: str,
    format: str = "auto",
    model: str | None = None,
    score_field: str | None = None,
    catalog: str | os.PathLike[str] | None = None,
    spec: DatasetSpec | None = None,
    *,
    models: Sequence[str] | None = None,
    exclude_models: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    price_file: str | os.PathLike[str] | None = None,
    replace: bool = False,
    embedder: str = DEFAULT_EMBEDDER,
) -> ImportReport:
    """Import a results table as answers (``source = 'imported'``) and grades of ``dataset``.

    Prompts the warehouse lacks are added from the table's ``prompt`` column (a dataset created here is
    results-only: never asked of an endpoint); a stored prompt keeps its text and split. LLMs missing from the
    warehouse catalog are appended to ``catalog`` (a ``llms.yaml``) as import-only entries and synced; without
    ``catalog`` they are an error. ``rename`` maps the table's LLM names to stored ones (before anything else);
    ``models`` / ``exclude_models`` keep or leave out some of the table's LLMs.

    Every LLM must be priced: by the table's ``cost_usd``, by its tokens x the catalog's per-million-token prices,
    or by the catalog's ``usd_per_query``; ``price_file`` (:func:`read_price_file`) gives prices, written into the
    catalog entries (an entry with another price already is an error). Where per-token prices apply and the table
    has no token counts, they are estimated from the prompt and answer text with ``embedder``'s tokenizer (stored
    with ``tokens_estimated``). An LLM left without any price is refused, naming it.

    Answers are insert-only: one stored already is kept, and the report says how many the file would change;
    ``replace=True`` archives those (as re-profiling does) and stores the file's. A pair answered by an endpoint
    keeps that answer and its grade. Everything is checked before anything is written.
    """
    if model is not None:
        wh.check_llm_name(model, "--model")
    results = read_results(path, format, model=model, score_field=score_field)
    results = _select_models(_renamed(results, rename or {}), models, exclude_models)
    _check_names(path, results)
    results = results.with_columns((pl.lit(f"{dataset}/") + pl.col("prompt_id")).alias("stored_id"))
    names = sorted(set(results["model"]))
    stored = wh.read_prompts(con).filter(pl.col("prompt_id").is_in(results["stored_id"].unique().to_list()))
    new = results.filter(~pl.col("stored_id").is_in(stored["prompt_id"].to_list()))
    llms = wh.read_llms(con)
    missing_llms = sorted(set(names) - set(llms["name"]))
    if missing_llms and catalog is None:
        raise PromptSetError(f"model={missing_llms[0]!r}: not in the catalog; add it (or pass a catalog to extend)")
    prices = read_price_file(price_file).filter(pl.col("model").is_in(names)) if price_file else None
    if prices is not None and catalog is None:
        raise PromptSetError(f"{price_file}: prices are written into the catalog: pass the catalog to extend")
    updates = _price_updates(llms, prices, price_file)
    if (no_text := new.filter(pl.col("prompt").is_null())).height:
        raise PromptSetError(
            f"prompt_id={no_text['prompt_id'][0]!r}: not in the warehouse and the results give no prompt text "
            f"(import the prompts first: uniroute import-prompts FILE --dataset {dataset})"
        )
    existing = wh.read_datasets(con).filter(pl.col("name") == dataset)
    if spec is None:
        spec = (
            DatasetSpec.model_validate_json(existing["spec"][0])
            if existing.height
            else DatasetSpec(collectable=False, grader=IMPORTED_GRADER)
        )
    rows = _prompt_rows(new)
    prepared = prepare_prompts(dataset, rows, spec) if rows.height else stored.head(0)  # checked before writing
    asked = dict(pl.concat([stored.select("prompt_id", "prompt"), prepared.select("prompt_id", "prompt")]).iter_rows())
    effective = _effective_prices(llms, prices, names)
    answers = _estimate_tokens(_answers(results, path), asked, effective, embedder)
    _require_prices(answers, effective)
    scores = results.select("model", pl.col("stored_id").alias("prompt_id"), "score")
    compared = _compare(con, answers.join(scores, on=["model", "prompt_id"]), names)
    report = ImportReport(dataset=dataset, models=names, with_cost=int(results["cost_usd"].is_not_null().sum()))
    report.already_stored = compared.filter(pl.col("state") == "unchanged").height
    report.differing = compared.filter(pl.col("state") == "differs").height
    report.tokens_estimated = int(answers["tokens_estimated"].sum())
    if missing_llms or updates:
        added = [{"name": n, "base_url": None, **_prices_of(prices, n)} for n in missing_llms]
        wh.edit_catalog(catalog, add=added, update=updates)  # import-only: no endpoint, so nothing will ask it
        wh.sync_catalog(con, catalog)
        report.models_added_to_catalog, report.models_priced = missing_llms, sorted(updates)
    if rows.height:
        report.prompts_added = write_prompt_set(con, dataset, rows, spec, source=str(path)).height
    if replace and report.differing:
        report.replaced = wh.archive_pairs(con, compared.filter(pl.col("state") == "differs"), "re-imported")
        report.differing = 0
    store = compared.filter((pl.col("state") == "new") | ((pl.col("state") == "differs") & replace))
    report.answers_stored = wh.insert_responses(
        con, answers.join(store.select("model", "prompt_id"), on=["model", "prompt_id"])
    )
    # grades of the answers stored now, and of imported answers left without one
    graded = compared.filter(pl.col("state").is_in(["new", "ungraded"]) | ((pl.col("state") == "differs") & replace))
    grades = scores.join(graded.select("model", "prompt_id"), on=["model", "prompt_id"]).with_columns(
        pl.lit(IMPORTED_GRADER).alias("grader"), pl.lit("1").alias("grader_version")
    )
    report.grades_written = wh.upsert_grades(con, grades)
    return report


def read_price_file(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Prices of LLMs from a CSV or YAML file: ``model`` and ``usd_per_query`` or ``usd_per_mtok_in`` and
    ``usd_per_mtok_out`` (or all three). YAML: a list of such mappings, or a mapping of model to its prices.

    Returns ``model`` plus :data:`PRICE_FIELDS` (null where not given). Raises :class:`PromptSetError` naming the
    file, the model, the field and the value: prices are finite and bounded as in the catalog.
    """
    path = Path(path)
    try:
        entries = _price_entries(path)
    except UserFileError as exc:
        raise PromptSetError(str(exc)) from None
    rows = [_price_row(path, i, entry) for i, entry in enumerate(entries)]
    frame = pl.DataFrame(rows, schema={"model": pl.String, **dict.fromkeys(PRICE_FIELDS, pl.Float64)})
    if (dup := frame.filter(pl.col("model").is_duplicated())).height:
        raise PromptSetError(f"{path}: model {dup['model'][0]!r} is priced twice")
    return frame


def _price_entries(path: Path) -> list[Mapping[str, Any]]:
    """The rows of a price file, read within the bounds of a user's file (``warehouse.userfiles``)."""
    if path.suffix.lower() == ".csv":
        return pl.read_csv(check_size(path), infer_schema_length=None).to_dicts()
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise PromptSetError(f"{path}: unsupported price file suffix {path.suffix!r}; use .csv, .yaml or .yml")
    document = load_user_yaml(path)
    if isinstance(document, Mapping):
        document = [{"model": name, **(v if isinstance(v, Mapping) else {})} for name, v in document.items()]
    if not isinstance(document, list) or not all(isinstance(entry, Mapping) for entry in document):
        raise PromptSetError(f"{path}: expected a list of {{model, prices}} or a mapping of model to prices")
    return document


def _price_row(path: Path, i: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    """One checked price-file row (the catalog's bounds, a price per query or a pair per million tokens)."""
    name = entry.get("model")
    name = name.strip() if isinstance(name, str) else name
    where = f"{path}: row {i + 1} (model={wh.shown_name(name)})"
    if (problem := wh.llm_name_problem(name)) is not None:
        raise PromptSetError(f"{where}: model: not a valid LLM name: {problem}")
    if unknown := sorted(set(entry) - {"model", *PRICE_FIELDS}):
        raise PromptSetError(f"{where}: unknown column {unknown[0]!r}; a price file has model and {list(PRICE_FIELDS)}")
    prices = {k: v for k, v in entry.items() if k in PRICE_FIELDS and v is not None}
    try:
        LLMEntry.model_validate({"name": name, **prices})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PromptSetError(f"{where}: {err['loc'][0]}: {err['msg']}, got {err['input']!r}") from None
    if "usd_per_query" not in prices and len(prices) < 2:
        raise PromptSetError(f"{where}: needs usd_per_query, or usd_per_mtok_in and usd_per_mtok_out")
    return {"model": name, **{k: float(prices[k]) if k in prices else None for k in PRICE_FIELDS}}


def _check_names(path: str | os.PathLike[str], results: pl.DataFrame) -> None:
    """Raise naming the first of the results' LLMs whose name breaks the rule (``warehouse.check_llm_name``)."""
    for name in results["model"].unique(maintain_order=True):
        if (problem := wh.llm_name_problem(name)) is not None:
            raise PromptSetError(
                f"{path}: model: {wh.shown_name(name)} is not a valid LLM name: {problem}; rename it (--rename "
                "OLD=NEW), pass --model, or leave it out (--exclude-models)"
            )


def _renamed(results: pl.DataFrame, rename: Mapping[str, str]) -> pl.DataFrame:
    """``results`` with each LLM ``old`` of ``rename`` called ``new``; an ``old`` the file lacks, or two LLMs given
    one name, is an error."""
    have = set(results["model"])
    if unknown := sorted(set(rename) - have):
        raise PromptSetError(f"--rename: {_listed(unknown)} not in the results (their LLMs: {_listed(sorted(have))})")
    names = [rename.get(m, m) for m in sorted(have)]
    if clash := sorted({n for n in names if names.count(n) > 1}):
        raise PromptSetError(f"--rename: {_listed(clash)} would name two of the results' LLMs")
    return results.with_columns(pl.col("model").replace(dict(rename))) if rename else results


def _select_models(results: pl.DataFrame, models: Sequence[str] | None, exclude: Sequence[str]) -> pl.DataFrame:
    """``results`` of ``models`` (default: all) but not ``exclude``; names the file lacks are an error."""
    have = sorted(set(results["model"]))
    for flag, names in (("--models", models or ()), ("--exclude-models", exclude)):
        if unknown := sorted(set(names) - set(have)):
            raise PromptSetError(f"{flag}: {_listed(unknown)} not in the results (their LLMs: {_listed(have)})")
    keep = (set(models) if models else set(have)) - set(exclude)
    if not keep:
        raise PromptSetError(f"--exclude-models: leaves none of the results' LLMs ({_listed(have)})")
    return results.filter(pl.col("model").is_in(sorted(keep)))


def _listed(names: Sequence[str], shown: int = 5) -> str:
    """Names for a one-line message: the first few, and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


def _price_updates(
    llms: pl.DataFrame, prices: pl.DataFrame | None, price_file: str | os.PathLike[str] | None
) -> dict[str, dict[str, float]]:
    """The prices to write into existing catalog entries: those they lack. A different price is an error."""
    if prices is None:
        return {}
    updates: dict[str, dict[str, float]] = {}
    catalog = {row["name"]: row for row in llms.iter_rows(named=True)}
    for row in prices.filter(pl.col("model").is_in(list(catalog))).iter_rows(named=True):
        entry = catalog[row["model"]]
        for name in PRICE_FIELDS:
            value, stored = row[name], entry.get(name)
            if value is not None and stored is not None and value != stored:
                raise PromptSetError(
                    f"{price_file}: model {row['model']!r}: {name}={value!r}, but the catalog has {stored!r}: "
                    "a catalog price is never overwritten; edit the catalog or the price file"
                )
            if value is not None and stored is None:
                updates.setdefault(row["model"], {})[name] = value
    return updates


def _prices_of(prices: pl.DataFrame | None, name: str) -> dict[str, float]:
    """The prices ``prices`` gives ``name`` (none given: empty)."""
    if prices is None or (row := prices.filter(pl.col("model") == name)).height == 0:
        return {}
    return {k: v for k, v in row.row(0, named=True).items() if k in PRICE_FIELDS and v is not None}


def _effective_prices(llms: pl.DataFrame, prices: pl.DataFrame | None, names: list[str]) -> pl.DataFrame:
    """Each of ``names``' prices once the import has run: the catalog's, completed by the price file's."""
    catalog = llms.select(pl.col("name").alias("model"), *PRICE_FIELDS) if llms.height else None
    frame = pl.DataFrame({"model": names}, schema={"model": pl.String})
    if catalog is not None:
        frame = frame.join(catalog, on="model", how="left")
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias(k) for k in PRICE_FIELDS)
    if prices is not None:
        frame = frame.join(prices, on="model", how="left", suffix="_file").select(
            "model", *(pl.coalesce(k, f"{k}_file").alias(k) for k in PRICE_FIELDS)
        )
    return frame


def _answers(results: pl.DataFrame, path: str | os.PathLike[str]) -> pl.DataFrame:
    """The responses frame of the results (warehouse columns)."""
    return results.select(
        "model",
        pl.col("stored_id").alias("prompt_id"),
        "response",
        pl.col("input_tokens").cast(pl.Int32).alias("prompt_tokens"),
        pl.col("output_tokens").cast(pl.Int32).alias("completion_tokens"),
        "cost_usd",
        pl.col("prompt").fill_null("").map_elements(prompt_hash, return_dtype=pl.String).alias("prompt_hash"),
        pl.lit(f"import-{prompt_hash(str(Path(path).resolve()))[:12]}").alias("run_id"),
        pl.lit("imported").alias("source"),
        pl.lit(False).alias("tokens_estimated"),
    )


def _estimate_tokens(
    answers: pl.DataFrame, asked: Mapping[str, str], prices: pl.DataFrame, embedder: str
) -> pl.DataFrame:
    """``answers`` with the token counts they lack estimated from the prompt asked and the answer's text, where
    they would be priced per token (no measured cost, per-million-token prices, the answer's text known)."""
    per_token = prices.filter(pl.col("usd_per_mtok_in").is_not_null() & pl.col("usd_per_mtok_out").is_not_null())
    todo = answers.filter(
        pl.col("model").is_in(per_token["model"].to_list()),
        pl.col("cost_usd").is_null(),
        pl.col("prompt_tokens").is_null() | pl.col("completion_tokens").is_null(),
        pl.col("response").is_not_null(),
    )
    if todo.height == 0:
        return answers
    ids = todo["prompt_id"].unique().to_list()
    prompt_counts = dict(zip(ids, count_tokens([asked[i] for i in ids], embedder), strict=True))
    estimates = todo.select(
        "model",
        "prompt_id",
        pl.col("prompt_id").replace_strict(prompt_counts, return_dtype=pl.Int32).alias("_in"),
        pl.Series("_out", count_tokens(todo["response"].to_list(), embedder), dtype=pl.Int32),
    )
    return (
        answers.join(estimates, on=["model", "prompt_id"], how="left")
        .with_columns(
            pl.coalesce("prompt_tokens", "_in").alias("prompt_tokens"),
            pl.coalesce("completion_tokens", "_out").alias("completion_tokens"),
            pl.col("_in").is_not_null().alias("tokens_estimated"),
        )
        .drop("_in", "_out")
    )


def _require_prices(answers: pl.DataFrame, prices: pl.DataFrame) -> None:
    """Raise naming the LLMs none of whose answers has a cost (measured, tokens x prices, or per query)."""
    priced = answers.join(prices, on="model", how="left").with_columns(
        (
            pl.col("cost_usd").is_not_null()
            | pl.col("usd_per_query").is_not_null()
            | pl.all_horizontal(
                pl.col(c).is_not_null()
                for c in ("prompt_tokens", "completion_tokens", "usd_per_mtok_in", "usd_per_mtok_out")
            )
        ).alias("priced")
    )
    unpriced = priced.group_by("model").agg(pl.col("priced").any()).filter(~pl.col("priced"))["model"].sort()
    if unpriced.len():
        raise PromptSetError(
            f"no price for {_listed(unpriced.to_list(), 3)}: no cost_usd in the results, no usd_per_query or "
            "per-token prices (with tokens or answer text) in the catalog; give them with --price-file FILE "
            "(model, usd_per_query or usd_per_mtok_in/out) or in the catalog"
        )


def _compare(con: duckdb.DuckDBPyConnection, incoming: pl.DataFrame, models: list[str]) -> pl.DataFrame:
    """``model, prompt_id, state`` of each incoming answer: ``new``; ``unchanged`` (stored as the file has it, or
    answered by an endpoint); ``ungraded`` (stored as the file has it, without a grade); ``differs``."""
    stored = wh.read_responses(con, models).join(
        wh.read_grades(con).select("model", "prompt_id", "score"), on=["model", "prompt_id"], how="left"
    )
    stored = stored.select("model", "prompt_id", *(pl.col(c).alias(f"{c}_stored") for c in ("source", *_COMPARED)))
    joined = incoming.join(stored, on=["model", "prompt_id"], how="left")
    differs = pl.any_horizontal(
        pl.col(c).cast(pl.Float64 if c != "response" else pl.String).ne_missing(pl.col(f"{c}_stored"))
        for c in _COMPARED
        if c != "score"
    ) | (pl.col("score_stored").is_not_null() & (pl.col("score") != pl.col("score_stored")))
    state = (
        pl.when(pl.col("source_stored").is_null())
        .then(pl.lit("new"))
        .when(pl.col("source_stored") == "collected")
        .then(pl.lit("unchanged"))
        .when(differs)
        .then(pl.lit("differs"))
        .when(pl.col("score_stored").is_null())
        .then(pl.lit("ungraded"))
        .otherwise(pl.lit("unchanged"))
    )
    return joined.select("model", "prompt_id", state.alias("state"))


def _prompt_rows(results: pl.DataFrame) -> pl.DataFrame:
    """Prompt rows (the file format) of the results' prompts."""
    firsts = results.group_by("prompt_id", maintain_order=True).agg(
        pl.col("prompt").first(), pl.col("category").first(), pl.col("reference").first(), pl.col("split").first()
    )
    return normalise_rows(firsts)
