"""The ``uniroute`` command line: profiling commands (replay-server, sync-catalog, import-mmlu-pro, collect,
grade) and serving commands (route, models, add-model, serve).

The registry is ``$MLFLOW_TRACKING_URI``, else the sqlite file under ``<data home>/mlflow`` (beside the warehouse
file; ``UNIROUTE_WAREHOUSE`` / ``UNIROUTE_DATA_HOME`` move it); the catalog is ``$UNIROUTE_CATALOG`` or
``llms.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import profiling.cli

DEFAULT_MODEL_URI = "models:/uniroute@champion"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniroute", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profiling.cli.add_commands(commands)

    def with_registry(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--model-uri", default=DEFAULT_MODEL_URI, help=f"default {DEFAULT_MODEL_URI}")
        sub.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (see above)")
        return sub

    route = with_registry(commands.add_parser("route", help="which LLM the router picks for a prompt, and why"))
    route.add_argument("prompt", nargs="+", help="one or more prompts")
    budget = route.add_mutually_exclusive_group()
    budget.add_argument("--cost-weight", type=float, default=None, help="lambda: error + lambda * cost (USD)")
    budget.add_argument("--max-cost", type=float, default=None, help="budget in USD per query")
    budget.add_argument("--min-accuracy", type=float, default=None, help="accuracy to reach, at least cost")
    route.add_argument("--candidates", nargs="+", default=None, help="route among these LLMs only")
    route.set_defaults(run=_route)

    models = with_registry(commands.add_parser("models", help="the router's pool: cost and Psi per LLM"))
    models.set_defaults(run=_models)

    add = commands.add_parser("add-model", help="append an LLM to the catalog, validating the whole catalog")
    add.add_argument("name")
    add.add_argument("--catalog", type=Path, default=None, help="default $UNIROUTE_CATALOG or llms.yaml")
    add.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. https://api.x.com/v1")
    add.add_argument("--model-id", default=None, help="the endpoint's model name (default: NAME)")
    add.add_argument("--usd-per-mtok-in", type=float, required=True)
    add.add_argument("--usd-per-mtok-out", type=float, required=True)
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
    serve.add_argument("--reload-interval", type=float, default=30.0, help="seconds between alias checks")
    serve.add_argument(
        "--embed-batch",
        type=int,
        default=32,
        help="prompts of concurrent requests embedded in one call, at most (1: each request its own call)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger request bodies get 413")
    serve.add_argument("--max-tokens", type=int, default=16_384, help="largest max_tokens a request may ask")
    serve.add_argument("--fallbacks", type=int, default=2, help="next-best LLMs tried when the choice fails")
    serve.add_argument("--retries", type=int, default=2, help="retries per LLM on 429/5xx/timeouts")
    serve.add_argument(
        "--decisions-dir", type=Path, default=None, help="decision log files (default <warehouse dir>/decisions)"
    )
    serve.add_argument(
        "--ledger", type=Path, default=None, help="keys' spend and rate counters (default <warehouse dir>/gateway/)"
    )
    serve.set_defaults(run=_serve)
    return parser


def _catalog_path(path: Path | None) -> Path:
    return path or Path(os.environ.get("UNIROUTE_CATALOG", "llms.yaml"))


def _load(args: argparse.Namespace):
    """The registered pyfunc (unwrapped) that ``--model-uri`` names."""
    import mlflow

    from serving import registry

    registry.configure(args.tracking_uri or registry.default_tracking_uri())
    try:
        return mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model()
    except mlflow.exceptions.MlflowException as exc:
        message = str(exc).splitlines()[0]
        raise SystemExit(f"{args.model_uri}: {message} (registry {mlflow.get_tracking_uri()})") from None


def _route(args: argparse.Namespace) -> int:
    import pandas as pd

    model = _load(args)
    params = {
        "cost_weight": args.cost_weight,
        "max_cost_per_query": args.max_cost,
        "min_accuracy": args.min_accuracy,
        "candidates": args.candidates,
    }
    try:
        out = model.predict(
            None, pd.DataFrame({"prompt": args.prompt}), {k: v for k, v in params.items() if v is not None}
        )
    except ValueError as exc:
        raise SystemExit(f"route: {exc}") from None
    for prompt, row in zip(args.prompt, out.itertuples(), strict=True):
        print(f"{row.llm}\t(cost_weight {row.cost_weight:.4g})\t{prompt[:60]}")
        ranked = sorted(row.predicted_error, key=row.predicted_error.get)
        for name in ranked:
            marker = "*" if name == row.llm else " "
            print(f"  {marker} {name:<32} predicted error {row.predicted_error[name]:.3f}   cost ${row.cost[name]:.6f}")
    return 0


def _models(args: argparse.Namespace) -> int:
    model = _load(args)
    router = model.router
    print(f"{args.model_uri}: {len(router.llms_)} LLMs, {router.psi_.shape[1]} clusters")
    print(f"  {'llm':<32}{'cost/query':>12}{'mean Psi':>10}{'best cluster':>14}{'worst cluster':>15}")
    order = sorted(range(len(router.llms_)), key=lambda j: router.costs_[j])
    for j in order:
        psi = router.psi_[j]
        print(
            f"  {router.llms_[j]:<32}{router.costs_[j]:>12.6f}{psi.mean():>10.3f}"
            f"{f'{psi.argmin()} ({psi.min():.2f})':>14}{f'{psi.argmax()} ({psi.max():.2f})':>15}"
        )
    return 0


def _add_model(args: argparse.Namespace) -> int:
    import warehouse as wh

    path = _catalog_path(args.catalog)
    entry = {
        "name": args.name,
        "base_url": args.base_url,
        "model_id": args.model_id,
        "api_key_env": args.api_key_env,
        "usd_per_mtok_in": args.usd_per_mtok_in,
        "usd_per_mtok_out": args.usd_per_mtok_out,
        "max_concurrency": args.max_concurrency,
        "requests_per_minute": args.requests_per_minute,
    }
    try:
        catalog = wh.add_to_catalog(path, entry)
    except wh.CatalogError as exc:
        print(f"add-model: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {args.name} added ({catalog.height} LLMs); the onboarding sensor profiles it on its next tick")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serving import registry
    from serving.gateway import CONFIG_ENV, Gateway, GatewayConfig, create_app, open_ledger
    from serving.keys import KeyStore
    from serving.metrics import MULTIPROC_ENV, clear_multiprocess_dir
    from serving.middleware import check_bind

    catalog = _catalog_path(args.catalog)
    if not catalog.exists():
        raise SystemExit(f"serve: no catalog at {catalog}; pass --catalog or set UNIROUTE_CATALOG")
    if args.workers < 1:
        print(f"uniroute serve: --workers {args.workers}: expected at least 1", file=sys.stderr)
        return 2
    config = GatewayConfig(
        catalog_path=str(catalog.resolve()),
        model_uri=args.model_uri,
        tracking_uri=args.tracking_uri or registry.default_tracking_uri(),
        keys_file=str(args.keys_file.resolve()) if args.keys_file else None,
        reload_interval_s=args.reload_interval,
        embed_batch=args.embed_batch,
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        fallbacks=args.fallbacks,
        retries=args.retries,
        decisions_dir=str(args.decisions_dir.resolve()) if args.decisions_dir else None,
        ledger_path=str(args.ledger.resolve()) if args.ledger else None,
    )
    try:
        notice = check_bind(args.host, KeyStore.load(args.keys_file), args.allow_unauthenticated)
        open_ledger(config)  # an unwritable ledger is an error now, not at the first request
    except (ValueError, OSError) as exc:
        print(f"uniroute serve: {exc}", file=sys.stderr)
        return 2
    if notice:
        print(f"uniroute serve: {notice}", file=sys.stderr)
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


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the input's fault: each names the field and value, so one line says it all."""
    from profiling.datasets import PromptSetError
    from profiling.results import ResultsError
    from warehouse import CatalogError, WarehouseInputError

    return PromptSetError, ResultsError, CatalogError, WarehouseInputError


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``uniroute``: a user error is a message on stderr and exit code 2, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _user_errors() as exc:
        print(f"uniroute {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
