"""The serving commands of ``uniroute`` (:mod:`pipelines.cli` assembles the command line): route, models,
add-model, serve and mlflow (promote and rollback: :mod:`serving.alias_commands`).

The registry is ``$MLFLOW_TRACKING_URI``, else the sqlite file under ``<data home>/mlflow`` (beside the warehouse
file; ``UNIROUTE_WAREHOUSE`` / ``UNIROUTE_DATA_HOME`` move it); a sqlite registry that does not exist is an
error, never created. The catalog is ``$UNIROUTE_CATALOG`` or ``llms.yaml``. A user error is one line on stderr
and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

# Only the standard library here (as in profiling.cli and pipelines.cli): `uniroute --help` must not wait for
# mlflow, polars or torch (seconds); each command imports what it runs.

DEFAULT_MODEL_URI = "models:/uniroute@champion"


class CommandError(Exception):
    """A user error of a serving command (a bad option value, a missing registry): ``uniroute`` prints it as one
    line and exits with code 2 (serving imports nothing of profiling's, so it has its own)."""


def _finite(text: str) -> float:
    """A budget or cost weight: a finite number (float() also takes nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value):
        return value
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")


def _candidates(text: str) -> list[str]:
    """``--candidates a,b``: the names, blanks dropped."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated LLM names, got {text!r}")
    return names


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add route, models, mlflow, add-model, serve, promote and rollback to ``commands``."""

    def with_registry(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--model-uri", default=DEFAULT_MODEL_URI, help=f"default {DEFAULT_MODEL_URI}")
        sub.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (see above)")
        return sub

    route = with_registry(
        commands.add_parser(
            "route",
            help="which LLM the router picks for a prompt, and why",
            description="Route PROMPT (or each --prompt) and print the choice and every candidate's predicted "
            'error and cost, e.g. uniroute route "What is 2 + 2?" --candidates cheap,generalist',
        )
    )
    route.add_argument("prompt", nargs="?", default=None, help="the prompt; - reads it from stdin")
    route.add_argument(
        "--prompt", dest="prompts", action="append", default=[], metavar="TEXT", help="another prompt; repeatable"
    )
    budget = route.add_mutually_exclusive_group()
    budget.add_argument("--cost-weight", type=_finite, default=None, help="lambda: error + lambda * cost (USD)")
    budget.add_argument("--max-cost", type=_finite, default=None, help="budget in USD per query")
    budget.add_argument("--min-accuracy", type=_finite, default=None, help="accuracy to reach, at least cost")
    route.add_argument(
        "--candidates",
        type=_candidates,
        action="extend",
        default=None,
        metavar="A,B",
        help="route among these LLMs only (comma-separated; repeatable)",
    )
    route.add_argument(
        "--explain",
        action="store_true",
        help="why: the bound, the prompt's top clusters and every candidate's score terms (as POST /v1/route says)",
    )
    route.set_defaults(run=_route)

    models = with_registry(
        commands.add_parser("models", help="the router's pool: cost, validation error and Psi per LLM")
    )
    models.set_defaults(run=_models)

    ml = commands.add_parser(
        "mlflow",
        help="MLflow's own command line on the registry (ui, models serve, ...)",
        description="Run `mlflow ARGS` on the registry (see above), re-rooted first when it was copied or moved, "
        "with this environment's executables on PATH (`models serve` starts uvicorn) and the registry as "
        "MLFLOW_TRACKING_URI (and `ui`'s or `server`'s --backend-store-uri unless given), e.g. "
        "`uniroute mlflow ui --port 5000` or "
        "`uniroute mlflow models serve -m models:/uniroute@champion --env-manager local --port 5001`.",
    )
    ml.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (see above)")
    ml.add_argument("mlflow_args", nargs=argparse.REMAINDER, metavar="ARGS", help="mlflow's arguments")
    ml.set_defaults(run=_mlflow)

    add = commands.add_parser("add-model", help="append an LLM to the catalog, validating the whole catalog")
    add.add_argument("name")
    add.add_argument("--catalog", type=Path, default=None, help="default $UNIROUTE_CATALOG or llms.yaml")
    add.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. https://api.x.com/v1")
    add.add_argument("--model-id", default=None, help="the endpoint's model name (default: NAME)")
    add.add_argument("--usd-per-mtok-in", type=float, default=None, help="USD per million prompt tokens")
    add.add_argument("--usd-per-mtok-out", type=float, default=None, help="USD per million completion tokens")
    add.add_argument(
        "--usd-per-query", type=float, default=None, help="USD per query (instead of, or besides, the token prices)"
    )
    add.add_argument("--api-key-env", default=None, help="NAME of the variable holding the key (never the key)")
    add.add_argument("--max-concurrency", type=int, default=None)
    add.add_argument("--requests-per-minute", type=int, default=None)
    add.set_defaults(run=_add_model)

    serve = with_registry(commands.add_parser("serve", help="the OpenAI-compatible routing gateway"))
    serve.add_argument("--catalog", type=Path, default=None, help="default $UNIROUTE_CATALOG or llms.yaml")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="worker processes, each serving the same champion")
    serve.add_argument(
        "--keys-file", type=Path, default=None, help="client keys (hashed; python -m serving.keys hash makes entries)"
    )
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without client keys (anyone who reaches it spends your LLM budget)",
    )
    serve.add_argument(
        "--reload-interval", type=float, default=30.0, help="seconds between checks of the alias, catalog and keys file"
    )
    serve.add_argument(
        "--embed-batch",
        type=int,
        default=32,
        help="prompts of concurrent requests embedded in one call, at most (1: each request its own call)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger request bodies get 413")
    serve.add_argument(
        "--max-tokens",
        type=int,
        default=16_384,
        help="largest max_tokens a request may ask; a request without one holds this many on its key's budget",
    )
    serve.add_argument(
        "--max-upstream-bytes",
        type=int,
        default=16 * 2**20,
        help="largest upstream answer (plain or streamed) relayed; larger ones are refused (502)",
    )
    serve.add_argument("--fallbacks", type=int, default=2, help="next-best LLMs tried when the choice fails")
    serve.add_argument("--retries", type=int, default=2, help="retries per LLM on 429/5xx/timeouts")
    serve.add_argument(
        "--decisions-dir", type=Path, default=None, help="decision log files (default <warehouse dir>/decisions)"
    )
    serve.add_argument(
        "--ledger",
        type=Path,
        default=None,
        help="keys' spend and rate counters, and the request-id secret beside them (default <warehouse dir>/gateway/)",
    )
    serve.add_argument(
        "--traffic-sample-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="share of routed requests whose prompt, messages and answer are STORED (user text) in --traffic-dir, "
        "chosen by a hash of the request id; 0 (the default) stores none; a key with store: false never",
    )
    serve.add_argument(
        "--traffic-dir", type=Path, default=None, help="sampled traffic files (default <warehouse dir>/traffic)"
    )
    serve.add_argument(
        "--feedback-dir", type=Path, default=None, help="POST /v1/feedback ratings (default <warehouse dir>/feedback)"
    )
    serve.add_argument(
        "--shadow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when <name>@challenger exists, rank every routed request with it too, from the same embedding, and "
        "log its choice in the decision record (default on)",
    )
    serve.add_argument(
        "--canary-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of routed requests served by <name>@challenger, by a hash of the client key and the request's "
        "`user` (else its prompt): one user meets one version (default 0)",
    )
    serve.set_defaults(run=_serve)
    from serving import alias_commands  # promote and rollback (late: that module imports this one)

    alias_commands.add_commands(commands)


def _catalog_path(path: Path | None) -> Path:
    if path is not None:
        return path
    from warehouse.db import default_catalog_path  # the one place paths resolve (imported late: --help stays fast)

    return default_catalog_path()


def _tracking_uri(args: argparse.Namespace) -> str:
    """``--tracking-uri``, else the default registry; a sqlite registry must already exist (see
    :func:`_check_registry`)."""
    from serving import registry_files

    uri = args.tracking_uri or registry_files.default_tracking_uri()
    _check_registry(uri)
    return uri


def _check_registry(uri: str) -> None:
    """Refuse a ``sqlite:///PATH`` registry whose file is missing or holds no MLflow registry: MLflow would create
    an empty registry there, so a typo or a moved file would read as "no model" and leave a stray database."""
    import sqlite3

    from serving import registry_files

    path = registry_files.sqlite_path(uri)
    if path is None:
        return  # a server, a file store, memory: MLflow's own errors say what is wrong
    hint = "pass --tracking-uri or set MLFLOW_TRACKING_URI (the pipeline or `make demo` creates the registry)"
    if not path.is_file():
        problem = "not a file" if path.exists() else "no such file"
        raise CommandError(f"MLflow registry {path}: {problem} (tracking URI {uri}); {hint}")
    try:
        tables = registry_files.sqlite_tables(path)
    except sqlite3.DatabaseError as exc:
        raise CommandError(f"{path} ({uri}) is not an MLflow registry: {exc}; {hint}") from exc
    if "registered_models" not in tables:
        raise CommandError(f"{path} ({uri}) is not an MLflow registry: it has no registered_models table; {hint}")


def _load(args: argparse.Namespace):
    """The router version ``--model-uri`` names, ready to route (``router_core.servable.ServableRouter``). From a
    sqlite registry its files are read directly (re-rooted first if the registry moved): no MLflow import, which
    alone takes seconds; anything else goes through MLflow's loader."""
    from serving import registry_files

    uri = _tracking_uri(args)
    database = registry_files.sqlite_path(uri)
    if database is not None:
        registry_files.follow_moved_artifacts(database)
        try:
            directory = registry_files.router_dir(database, args.model_uri)
        except registry_files.RegistryLookupError as exc:
            raise CommandError(f"{args.model_uri}: {exc} (registry {uri})") from exc
        if directory is not None:
            from router_core.servable import ServableRouter

            return ServableRouter().load_dir(directory)
    return _load_with_mlflow(args.model_uri, uri)


def _load_with_mlflow(model_uri: str, tracking_uri: str):
    """The registered pyfunc (unwrapped: a ``ServableRouter`` too), through MLflow's loader."""
    import mlflow

    from serving import registry

    registry.configure(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except mlflow.exceptions.MlflowException as exc:
        message = str(exc).splitlines()[0]
        raise CommandError(f"{model_uri}: {message} (registry {mlflow.get_tracking_uri()})") from exc


def _prompts(args: argparse.Namespace) -> list[str]:
    """PROMPT (``-``: all of stdin, one prompt), then each ``--prompt``."""
    first = [] if args.prompt is None else [sys.stdin.read().rstrip("\n") if args.prompt == "-" else args.prompt]
    prompts = first + args.prompts
    if not prompts:
        raise CommandError("no prompt: give PROMPT, --prompt TEXT (repeatable) or - to read it from stdin")
    return prompts


def _route(args: argparse.Namespace) -> int:
    prompts = _prompts(args)
    model = _load(args)
    params = {
        "cost_weight": args.cost_weight,
        "max_cost_per_query": args.max_cost,
        "min_accuracy": args.min_accuracy,
        "candidates": args.candidates,
    }
    params = {k: v for k, v in params.items() if v is not None}
    try:
        if args.explain:
            return _explain(args, model, prompts, params)
        out = model.route(prompts, params)
    except ValueError as exc:  # a bad budget, an unknown candidate, an empty prompt: each named with its value
        raise CommandError(str(exc)) from exc
    rows = zip(prompts, out["llm"], out["cost_weight"], out["predicted_error"], out["cost"], strict=True)
    for prompt, llm, cost_weight, predicted_error, cost in rows:
        print(f"{llm}\t(cost_weight {cost_weight:.4g})\t{' '.join(prompt.split())[:60]}")
        for name in sorted(predicted_error, key=predicted_error.get):
            marker = "*" if name == llm else " "
            print(f"  {marker} {name:<32} predicted error {predicted_error[name]:.3f}   cost ${cost[name]:.6f}")
    return 0


def _explain(args: argparse.Namespace, model, prompts: list[str], params: dict) -> int:
    """``route --explain``: per prompt, :func:`serving.explain.format_table` of what ``POST /v1/route`` would say."""
    from serving import explain, registry_files
    from serving.loaded_router import split_model_uri

    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise CommandError(f"prompt[{i}]={prompt!r}: must be non-empty text")
    database = registry_files.sqlite_path(_tracking_uri(args))
    version = (registry_files.model_version(database, args.model_uri) if database else None) or args.model_uri
    alias = split_model_uri(args.model_uri)[1] if "@" in args.model_uri else None
    asked = next(((k, v) for k, v in params.items() if k != "candidates"), None)
    bound = explain.resolve_bound(model, None, asked, params.get("candidates") or list(model.router.llms_))
    for prompt, vector in zip(prompts, model.embedder.embed(prompts), strict=True):
        ranked = model.rank(prompt, vector, bound.params)
        print(explain.format_table(explain.explanation(ranked, bound, version, {"served_alias": alias}), prompt))
    return 0


def _models(args: argparse.Namespace) -> int:
    model = _load(args)
    router, errors = model.router, model.validation_error()
    print(
        f"{args.model_uri}: {len(router.llms_)} LLMs, {router.psi_.shape[1]} prompt clusters; validation error is "
        "an LLM's error rate on the validation prompts (Psi per cluster, weighted by the share of prompts in each "
        "cluster); Psi is its error rate on one cluster's (0: always right, 1: always wrong)"
    )
    print(
        f"  {'llm':<32}{'USD/query':>12}{'validation error':>18}{'best cluster (Psi)':>20}{'worst cluster (Psi)':>21}"
    )
    order = sorted(range(len(router.llms_)), key=lambda j: router.costs_[j])
    for j in order:
        psi = router.psi_[j]
        print(
            f"  {router.llms_[j]:<32}{router.costs_[j]:>12.6f}{errors[j]:>18.3f}"
            f"{f'{psi.argmin()} ({psi.min():.2f})':>20}{f'{psi.argmax()} ({psi.max():.2f})':>21}"
        )
    return 0


#: mlflow commands that take the registry as ``--backend-store-uri`` (the others read $MLFLOW_TRACKING_URI).
BACKEND_STORE_COMMANDS = ("ui", "server")


def _mlflow(args: argparse.Namespace) -> int:
    """``mlflow ARGS`` as its own process on the registry, re-rooted first (:func:`_load` does the same), so that a
    copied data home serves its own artifacts, never the original's."""
    import subprocess

    from serving import registry_files

    argv = list(args.mlflow_args)
    if not argv:
        raise CommandError("no mlflow arguments: e.g. `uniroute mlflow ui --port 5000`")
    uri = _tracking_uri(args)
    database = registry_files.sqlite_path(uri)
    if database is not None:
        registry_files.follow_moved_artifacts(database)
    if argv[0] in BACKEND_STORE_COMMANDS and "--backend-store-uri" not in argv:
        argv += ["--backend-store-uri", uri]
    bin_dir = os.path.dirname(sys.executable)  # the venv's: uvicorn, gunicorn (mlflow starts them by name)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
    }
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return subprocess.run([sys.executable, "-m", "mlflow", *argv], env=env, check=False).returncode


def _add_model(args: argparse.Namespace) -> int:
    import warehouse as wh

    wh.check_llm_name(args.name)  # before the catalog is read: the one-line error is about the name alone
    path = _catalog_path(args.catalog)
    entry = {
        "name": args.name,
        "base_url": args.base_url,
        "model_id": args.model_id,
        "api_key_env": args.api_key_env,
        "usd_per_mtok_in": args.usd_per_mtok_in,
        "usd_per_mtok_out": args.usd_per_mtok_out,
        "usd_per_query": args.usd_per_query,
        "max_concurrency": args.max_concurrency,
        "requests_per_minute": args.requests_per_minute,
    }
    catalog = wh.add_to_catalog(path, entry)  # a CatalogError is a user error (main prints it, exit code 2)
    print(f"{path}: {args.name} added ({catalog.height} LLMs); the onboarding sensor profiles it on its next tick")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import sqlite3

    from serving.loaded_router import split_model_uri

    # the arguments first: MLflow, uvicorn and the gateway (seconds of imports) only once they hold
    if args.workers < 1:
        raise CommandError(f"--workers {args.workers}: expected at least 1")
    if args.max_upstream_bytes < 1:
        raise CommandError(f"--max-upstream-bytes {args.max_upstream_bytes}: expected a positive byte count")
    if not 0 <= args.traffic_sample_rate <= 1:  # nan too
        raise CommandError(f"--traffic-sample-rate {args.traffic_sample_rate}: expected a number in [0, 1]")
    if not 0 <= args.canary_fraction <= 1:
        raise CommandError(f"--canary-fraction {args.canary_fraction}: expected a number in [0, 1]")
    try:
        split_model_uri(args.model_uri)
    except ValueError as exc:
        raise CommandError(f"--model-uri: {exc}") from exc
    import warehouse as wh
    from serving.gateway_config import CONFIG_ENV, GatewayConfig, open_ledger
    from serving.keys import KeyStore
    from serving.middleware import check_bind

    catalog = _catalog_path(args.catalog)
    if not catalog.is_file():
        raise CommandError(f"no catalog at {catalog}; pass --catalog or set UNIROUTE_CATALOG")
    wh.load_catalog(catalog)  # a bad catalog fails here, in one line, rather than in the server's start-up
    try:
        notice = check_bind(args.host, KeyStore.load(args.keys_file), args.allow_unauthenticated)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    config = GatewayConfig(
        catalog_path=str(catalog.resolve()),
        model_uri=args.model_uri,
        tracking_uri=_tracking_uri(args),
        keys_file=str(args.keys_file.resolve()) if args.keys_file else None,
        reload_interval_s=args.reload_interval,
        embed_batch=args.embed_batch,
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        fallbacks=args.fallbacks,
        retries=args.retries,
        decisions_dir=str(args.decisions_dir.resolve()) if args.decisions_dir else None,
        ledger_path=str(args.ledger.resolve()) if args.ledger else None,
        max_upstream_bytes=args.max_upstream_bytes,
        traffic_sample_rate=args.traffic_sample_rate,
        traffic_dir=str(args.traffic_dir.resolve()) if args.traffic_dir else None,
        feedback_dir=str(args.feedback_dir.resolve()) if args.feedback_dir else None,
        shadow=args.shadow,
        canary_fraction=args.canary_fraction,
    )
    try:
        open_ledger(config)  # an unwritable ledger is an error now, not at the first request
    except (ValueError, sqlite3.Error) as exc:
        raise CommandError(str(exc)) from exc
    if notice:
        print(f"uniroute serve: {notice}", file=sys.stderr)
    import uvicorn

    from serving import registry
    from serving.gateway import Gateway, create_app
    from serving.metrics import MULTIPROC_ENV, clear_multiprocess_dir

    options = {"host": args.host, "port": args.port, "log_config": _log_config(), "access_log": False}
    if args.workers == 1:
        uvicorn.run(create_app(Gateway(config)), **options)
        return 0
    os.environ[CONFIG_ENV] = config.to_json()  # each worker builds its gateway from it
    if not os.environ.get(MULTIPROC_ENV):  # every worker's metrics in /metrics, whichever worker answers
        os.environ[MULTIPROC_ENV] = str(registry.default_mlflow_dir().parent / "gateway" / f"metrics-{args.port}")
    clear_multiprocess_dir()
    uvicorn.run("serving.gateway:app_from_environment", factory=True, workers=args.workers, **options)
    return 0


def _log_config() -> dict:
    """uvicorn's logging, plus the gateway's own lines (access log, reloads, upstream trouble) at INFO."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["uvicorn"]["level"] = "WARNING"
    for name in ("serving", "uniroute"):
        config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
