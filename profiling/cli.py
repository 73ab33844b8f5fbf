"""The profiling commands of ``uniroute`` (:mod:`pipelines.cli` assembles the command line): the warehouse steps
(catalog, prompts, results, feedback, collect, grade). The replay endpoint's command is :mod:`replay.cli`."""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

# Only the standard library at module level: `uniroute --help` builds every parser, and the warehouse and the
# graders pull in polars, scikit-learn and the rest (seconds). Commands import what they run.

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "UNIROUTE_MMLU_PRO_DIR"
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "mmlu_pro"


class CommandError(Exception):
    """A user error of a command (a missing file, a bad option value): ``uniroute`` prints it as one line and
    exits with code 2."""


def default_data_dir() -> Path:
    """``$UNIROUTE_MMLU_PRO_DIR``, else ``../shared/data/mmlu_pro`` next to the project."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _rename(text: str) -> tuple[str, str]:
    """Parse ``OLD=NEW`` (``--rename``); the last ``=`` splits, so OLD may hold one."""
    old, sep, new = text.rpartition("=")
    if not (sep and old and new):
        raise argparse.ArgumentTypeError(f"--rename: expected OLD=NEW, got {text!r}")
    return old, new


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add sync-catalog, import-prompts, import-mmlu-pro, import-results, import-feedback, datasets, graders,
    collect and grade to ``commands``."""
    _add_warehouse_commands(commands)


def _add_warehouse_commands(commands: argparse._SubParsersAction) -> None:
    def command(name: str, help_text: str, run) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--warehouse", type=Path, default=None, help="DuckDB file (default $UNIROUTE_WAREHOUSE or data/)"
        )
        sub.set_defaults(run=run)
        return sub

    catalog = command(
        "sync-catalog",
        "validate llms.yaml (or CSV), make the warehouse catalog match it, and register each LLM's Dagster "
        "partition (in $DAGSTER_HOME, when set)",
        _sync,
    )
    catalog.add_argument("catalog", type=Path)
    prompts = command(
        "import-prompts",
        "validate a prompt file (JSONL, CSV or Parquet; docs/data.md) and store it as a dataset; "
        "a bad row is named and nothing is written",
        _import_prompts,
    )
    prompts.add_argument("file", type=Path, help="the prompt file (or, with --adapter mmlu_pro, its directory)")
    prompts.add_argument("--dataset", required=True, help="the dataset's name (prompt ids become NAME/<prompt_id>)")
    prompts.add_argument("--adapter", default="prompts", help="the file's layout (default prompts; see `datasets`)")
    prompts.add_argument("--spec", type=Path, default=None, help="YAML/JSON: template, request parameters, ...")
    prompts.add_argument(
        "--grader",
        default=None,
        help="grader of rows without one (see `uniroute graders`; with --results-only the default is `imported`: "
        "the scores come with the results)",
    )
    prompts.add_argument("--system-prompt", default=None)
    prompts.add_argument("--template", default=None, help='the user turn, e.g. "Q: {prompt}\nA:"')
    prompts.add_argument("--max-tokens", type=int, default=None)
    prompts.add_argument("--temperature", type=float, default=None)
    prompts.add_argument("--router-text", default=None, help="prompt | rendered | field:<column> | last:<N>")
    prompts.add_argument(
        "--results-only",
        action="store_true",
        help="never ask these prompts of an endpoint (import-results scores them)",
    )
    prompts.add_argument("--sample", type=int, default=None, help="a stratified sample of about N prompts")
    prompts.add_argument("--seed", type=int, default=None, help="seed of the assigned splits (default 0)")
    mmlu = command("import-mmlu-pro", "import MMLU-Pro questions as prompts (the mmlu_pro adapter)", _import)
    mmlu.add_argument("--data", type=Path, default=None, help=f"dataset directory; default ${DATA_DIR_ENV}")
    mmlu.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    results = command(
        "import-results",
        "import evaluation results you already have (long table, RouterBench-style wide table, or "
        "lm-evaluation-harness --log_samples) as answers and grades; new LLMs join the catalog as import-only",
        _import_results,
    )
    results.add_argument("file", type=Path, help="Parquet, CSV, JSONL, or a directory of lm-eval samples")
    results.add_argument("--dataset", required=True, help="the dataset the prompt ids belong to")
    results.add_argument("--format", default="auto", choices=["auto", "long", "wide", "lm-eval"])
    results.add_argument("--model", default=None, help="the model's name (lm-eval samples without results_*.json)")
    results.add_argument("--score-field", default=None, help="lm-eval: the metric to import (default acc, ...)")
    results.add_argument("--catalog", type=Path, default=None, help="default $UNIROUTE_CATALOG or llms.yaml")
    results.add_argument("--models", nargs="+", default=None, metavar="LLM", help="import only these LLMs")
    results.add_argument("--exclude-models", nargs="+", default=[], metavar="LLM", help="leave these LLMs out")
    results.add_argument(
        "--rename",
        type=_rename,
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="store the table's LLM OLD as NEW (e.g. meta/llama-2-70b-chat=llama-2-70b-chat: names hold no '/'); "
        "repeatable",
    )
    results.add_argument(
        "--price-file",
        type=Path,
        default=None,
        help="CSV or YAML: model, usd_per_query or usd_per_mtok_in/usd_per_mtok_out; written into the LLMs' catalog "
        "entries (a different price already there is an error)",
    )
    results.add_argument(
        "--replace",
        action="store_true",
        help="stored answers the file changes (cost, tokens, response, score) are archived and replaced",
    )
    feedback = command(
        "import-feedback",
        "import ratings of routed requests kept elsewhere (CSV, Parquet or JSONL: request_id and score in [0, 1] "
        "or thumbs up/down, optional rated_at) beside the gateway's; a bad row is named and nothing is written; "
        "importing again stores only new ratings",
        _import_feedback,
    )
    feedback.add_argument("file", type=Path)
    command("datasets", "the registered datasets: prompts, collectable, template version", _datasets)
    graders = commands.add_parser("graders", help="the registered graders, their versions and options")
    graders.set_defaults(run=_graders)
    collect = command("collect", "ask the catalog's LLMs every prompt they have not answered yet", _collect)
    collect.add_argument("--models", nargs="+", default=None, help="default: every active LLM")
    collect.add_argument("--splits", nargs="+", default=["validation"])
    collect.add_argument("--max-attempts", type=int, default=5)
    collect.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    collect.add_argument("--batch-size", type=int, default=512, help="answers per staged file")
    collect.add_argument("--quiet", action="store_true", help="no progress bar")
    collect.add_argument(
        "--refresh-before",
        type=datetime.fromisoformat,
        default=None,
        metavar="ISO_TIME",
        help="re-profile: archive answers collected before this UTC time and ask again",
    )
    collect.add_argument(
        "--fraction",
        type=float,
        default=None,
        help="a new LLM (no validation answer yet) is asked only this share of the validation prompts first, in the "
        "onboarding planner's order; later runs ask the rest (default router_core.onboarding's, 0.5; 1.0: all at once)",
    )
    collect.add_argument(
        "--budget-usd",
        type=float,
        default=None,
        help="USD each LLM's profile may cost at most (its stored answers count): collection stops before passing it",
    )
    collect.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be asked and its estimate (prompts, tokens, USD) per LLM, and ask nothing",
    )
    grade = command("grade", "grade stored responses not yet graded by the current grader version", _grade)
    grade.add_argument("--models", nargs="+", default=None)


def _sync(args: argparse.Namespace) -> int:
    import warehouse as wh

    catalog = wh.sync_catalog(lambda: wh.connect(args.warehouse), args.catalog)  # opened once the catalog is valid
    print(f"catalog: {catalog.height} LLMs synced ({catalog['active'].sum()} active)")
    _register_partitions(catalog.filter("active")["name"].to_list())
    return 0


#: The name of the Dagster partitions of per-LLM assets (``assets.profiling.llm_partitions``).
LLM_PARTITIONS = "llm"


def _register_partitions(names: list[str]) -> None:
    """Give each LLM its Dagster partition in ``$DAGSTER_HOME``'s instance (``dagster asset materialize
    --partition NAME`` then works without the onboarding sensor); nothing without ``$DAGSTER_HOME``."""
    if not os.environ.get("DAGSTER_HOME") or not names:
        return
    import dagster as dg

    import warehouse as wh

    for name in names:  # a partition is a directory of Dagster's storage: only ever from a checked name
        wh.check_llm_name(name)

    with dg.DagsterInstance.get() as instance:
        new = sorted(set(names) - set(instance.get_dynamic_partitions(LLM_PARTITIONS)))
        if new:
            instance.add_dynamic_partitions(LLM_PARTITIONS, new)
    print(f"dagster partitions: {len(new)} added ({', '.join(new) or 'none new'})")


def _import_prompts(args: argparse.Namespace) -> int:
    import warehouse as wh
    from profiling.datasets import IMPORTED_GRADER, import_dataset

    grader = args.grader or (IMPORTED_GRADER if args.results_only else None)  # results-only: scores come imported
    overrides = {
        "grader": grader,
        "system_prompt": args.system_prompt,
        "template": args.template,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "router_text": args.router_text,
        "seed": args.seed,
        "collectable": False if args.results_only else None,
    }
    with wh.connect(args.warehouse) as con:
        prompts = import_dataset(con, args.file, args.dataset, args.adapter, args.spec, args.sample, **overrides)
    splits = dict(sorted(prompts["split"].value_counts().iter_rows()))
    print(f"dataset {args.dataset}: {prompts.height} prompts imported; splits {splits}")
    return 0


def _import_results(args: argparse.Namespace) -> int:
    import warehouse as wh
    from profiling.importers import import_results

    catalog = args.catalog or wh.default_catalog_path()  # the one place paths resolve
    with wh.connect(args.warehouse) as con:
        report = import_results(
            con,
            args.file,
            args.dataset,
            args.format,
            args.model,
            args.score_field,
            catalog,
            models=args.models,
            exclude_models=args.exclude_models,
            rename=dict(args.rename),
            price_file=args.price_file,
            replace=args.replace,
        )
    replaced = f" ({report.replaced} replacing answers now archived)" if report.replaced else ""
    estimated = f", {report.tokens_estimated} with estimated tokens" if report.tokens_estimated else ""
    print(
        f"dataset {report.dataset}: {report.answers_stored} answers stored{replaced}, {report.already_stored} already "
        f"stored, unchanged; {report.grades_written} grades written; {len(report.models)} LLMs "
        f"({report.with_cost} answers with a per-query cost{estimated}); {report.prompts_added} prompts added"
    )
    if report.differing:
        print(
            f"{report.differing} stored answers differ from the file (cost, tokens, response or score) and were "
            "kept: --replace archives them and stores the file's"
        )
    if report.models_added_to_catalog:
        print(f"{catalog}: added as import-only: {', '.join(report.models_added_to_catalog)}")
    if report.models_priced:
        print(f"{catalog}: prices from {args.price_file} added to: {', '.join(report.models_priced)}")
    _register_partitions(report.models)
    return 0


def _import_feedback(args: argparse.Namespace) -> int:
    import warehouse as wh
    from profiling.feedback_import import import_feedback

    with wh.connect(args.warehouse) as con:
        report = import_feedback(con, args.file)
    repeated = f", {report.repeated} repeated rows of the file stored once" if report.repeated else ""
    print(
        f"feedback {report.source}: {report.stored} ratings stored, {report.already_stored} already stored"
        f"{repeated}; {report.unknown_requests} request ids without a stored decision (stored: their ratings join "
        "once the decision is loaded)"
    )
    return 0


def _datasets(args: argparse.Namespace) -> int:
    import warehouse as wh

    with wh.connect(args.warehouse) as con:
        frame = wh.read_datasets(con)
    print(f"{'dataset':<24}{'prompts':>9}  {'collectable':<12}{'template':<14}source")
    for row in frame.iter_rows(named=True):
        print(
            f"{row['name']:<24}{row['prompts']:>9}  {str(row['collectable']).lower():<12}"
            f"{row['template_version']:<14}{row['source'] or ''}"
        )
    return 0


def _graders(args: argparse.Namespace) -> int:
    from profiling.graders import grader_catalog

    for entry in grader_catalog():
        problem = f"  [unusable: {entry['error']}]" if entry.get("error") else ""
        print(f"{entry['name']:<16} v{entry['version']:<6} {entry['description']} ({entry['source']}){problem}")
        for option in entry["options"]:
            default = "required" if option["required"] else f"default {option['default']!r:.40}"
            print(f"    {option['name']:<22} {default:<22} {option['description']}")
    print("imported         (scores imported with results: kept as they are, never regraded)")
    return 0


def _import(args: argparse.Namespace) -> int:
    import warehouse as wh
    from profiling.importers import import_mmlu_pro

    with wh.connect(args.warehouse) as con:
        prompts = import_mmlu_pro(con, args.data or default_data_dir(), seed=args.seed)
    print(f"prompts: {prompts.height} imported; {dict(prompts['split'].value_counts().iter_rows())}")
    return 0


#: Seconds a command waits for the warehouse while a pipeline run writes it (each of those writes is short).
LOCK_WAIT_S = 600.0


def _opener(path: Path | None):
    """Opens the warehouse at ``path`` for writing, waiting up to :data:`LOCK_WAIT_S` for pipeline runs' writes;
    the first open reads every block (``warehouse.connect``'s ``verify``), later ones only the catalog."""
    import warehouse as wh

    opened = []

    def connect():
        con = wh.connect(path, lock_wait_s=LOCK_WAIT_S, verify=not opened)
        opened.append(path)
        return con

    return connect


def _collect(args: argparse.Namespace) -> int:
    """A profiling run's steps, as Dagster runs them: archive and plan (against the warehouse and unmerged
    staging), a new LLM's onboarding share, ask and stage without holding the warehouse, merge. So it runs beside
    pipeline runs. ``--dry-run`` prints the estimate and asks nothing."""
    import warehouse as wh
    from profiling.collector import RetryPolicy
    from profiling.onboarding import DEFAULT_ONBOARDING_FRACTION, check_fraction
    from profiling.staging import collect

    fraction = DEFAULT_ONBOARDING_FRACTION if args.fraction is None else args.fraction
    try:
        check_fraction(fraction)
    except ValueError as exc:
        raise CommandError(f"--fraction={fraction!r}: must be in (0, 1] (1.0: every validation prompt)") from exc
    if args.budget_usd is not None and not 0 <= args.budget_usd < float("inf"):
        raise CommandError(f"--budget-usd={args.budget_usd!r}: must be a finite number of USD >= 0")
    staging = wh.default_staging_path(args.warehouse)
    if args.dry_run:
        return _dry_run(args, fraction, staging)
    policy = RetryPolicy(max_attempts=args.max_attempts, timeout_s=args.timeout)
    options = {"batch_size": args.batch_size, "progress": not args.quiet, "refresh_before": args.refresh_before}
    onboarding = {"fraction": fraction, "budget_usd": args.budget_usd}
    report = collect(
        _opener(args.warehouse), args.models, args.splits, policy, staging_dir=staging, **options, **onboarding
    )
    merged = report.merged
    print(
        f"collection {report.run_id}: {report.stored}/{report.requested} stored, {report.failed} failed "
        f"(see collection_failures), {report.attempts} attempts, ${report.cost_usd:.4f}, {report.seconds:.1f} s; "
        f"{merged.answers_stored} answers merged into the warehouse from {merged.files} staged files"
    )
    for message in report.budget_messages:
        print(message)
    return 0 if report.failed == 0 else 3


def _dry_run(args: argparse.Namespace, fraction: float, staging) -> int:
    """Print each LLM's estimate (:class:`profiling.onboarding.CostEstimate`) of what ``uniroute collect`` would
    ask now; reads the warehouse and the staged files only (answers a re-profiling would archive still count)."""
    import warehouse as wh
    from profiling.collector import active_llms
    from profiling.onboarding import plan_onboarding
    from profiling.staging import plan_collection

    def read() -> object:
        return wh.connect_read_only(args.warehouse, lock_wait_s=LOCK_WAIT_S)

    with read() as con:
        llms = active_llms(con, args.models)
    pairs = plan_collection(read, llms["name"].to_list(), args.splits, staging, args.refresh_before)
    plan = plan_onboarding(read, llms, pairs, fraction, args.budget_usd, record=False)
    for estimate in plan.estimates.values():
        print(f"estimate {estimate.line()}")
    budget = "no budget" if args.budget_usd is None else f"budget ${args.budget_usd:.4f} per LLM"
    priced = [e.usd for e in plan.estimates.values() if e.usd is not None]
    print(f"dry run: {plan.pairs.height} prompts, at most ${sum(priced):.4f} in all ({budget}); nothing asked")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from profiling.completion import catalog_completer
    from profiling.grading import grade_responses_report

    connect = _opener(args.warehouse)
    with connect() as con:
        complete = catalog_completer(con)
    report = grade_responses_report(connect, args.models, complete)  # not held while judges answer
    print(
        f"grades: {report.written} written, {report.failed} not graded (retried next run), "
        f"judges ${report.judge_cost_usd:.4f}"
    )
    for example in report.examples:
        print(f"  {example}")
    return 0
