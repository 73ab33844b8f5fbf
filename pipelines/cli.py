"""The ``uniroute`` command line: every floor's commands in one parser. The replay endpoint's (replay-server:
:mod:`replay.cli`), profiling's (sync-catalog, import-prompts, import-mmlu-pro, import-results, import-feedback,
datasets, graders, collect, grade: :mod:`profiling.cli`), serving's (route, models, add-model, serve, mlflow:
:mod:`serving.cli`) and the pipeline's own, refresh (the pipeline, now).

The registry is ``$MLFLOW_TRACKING_URI``, else the sqlite file under ``<data home>/mlflow`` (beside the warehouse
file; ``UNIROUTE_WAREHOUSE`` / ``UNIROUTE_DATA_HOME`` move it); a sqlite registry that does not exist is an
error, never created. The catalog is ``$UNIROUTE_CATALOG`` or ``llms.yaml``. A user error is one line on stderr
and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

import profiling.cli
import replay.cli
import serving.cli
from profiling.cli import CommandError

# Only the standard library here and in the floors' cli modules: `uniroute --help` must not wait for Dagster,
# mlflow, polars or torch (seconds); each command imports what it runs.


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one ``--help`` away) and exit code 2."""

    commands: dict[str, argparse.ArgumentParser]  # the subcommands' parsers, by name (set by build_parser)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """``uniroute`` and every command of each floor; ``--debug`` anywhere on the line."""
    parser = _Parser(prog="uniroute", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    replay.cli.add_command(commands)
    profiling.cli.add_commands(commands)
    serving.cli.add_commands(commands)
    refresh = commands.add_parser(
        "refresh",
        help="bring everything up to date now: what the Dagster daemon would do, in this process",
        description="On $DAGSTER_HOME's instance: the onboarding sensor's tick and the profiling runs it requests, "
        "a prompt_set run for each dataset imported since, then automation ticks until nothing more is requested "
        "(embeddings, cluster map, features per LLM, router); a line per run, then what changed. Safe beside a "
        "running daemon: the same cursors and run keys, so neither launches a run the other did.",
    )
    refresh.add_argument(
        "--complete",
        action="store_true",
        help="also ask every LLM the validation prompts it has not answered (the rest of a new LLM's partial "
        "profile: it is first asked onboarding.fraction of them), as the nightly profiling schedule does",
    )
    refresh.set_defaults(run=_refresh)
    for sub in commands.choices.values():  # `uniroute route ... --debug` works too
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.commands = commands.choices
    return parser


def _refresh(args: argparse.Namespace) -> int:
    """:func:`pipelines.refresh.refresh` (imported only when run: nothing else of the command line needs Dagster)."""
    from pipelines.refresh import NothingToRefresh, refresh

    try:
        refresh(complete=args.complete)
    except NothingToRefresh as exc:
        raise CommandError(str(exc)) from exc
    return 0


#: Errors that are the input's fault, by module: each names the field and value (or the file), so one line says it
#: all. Looked up only in modules already imported (one that was not cannot have raised), so nothing is imported
#: to report an error.
USER_ERRORS = (
    ("profiling.cli", "CommandError"),
    ("serving.cli", "CommandError"),
    ("profiling.prompt_files", "PromptSetError"),
    ("profiling.results", "ResultsError"),
    ("profiling.feedback_import", "FeedbackFileError"),
    ("warehouse.catalog", "CatalogError"),
    ("warehouse.names", "LLMNameError"),
    ("warehouse", "WarehouseInputError"),
    ("warehouse.db", "SchemaError"),  # a warehouse written by a newer uniroute
    ("warehouse.db", "WarehouseCorruptError"),  # names the file: restore it from a backup
    ("router_core._errors", "RouterInputError"),
    ("mlflow.exceptions", "MlflowException"),  # e.g. an unknown alias or model
    ("duckdb", "IOException"),  # the warehouse cannot be opened: locked by another process, not a DuckDB file
)


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):  # a missing or unreadable file, a directory that cannot be created
        return True
    loaded = (getattr(sys.modules.get(module), name, None) for module, name in USER_ERRORS)
    return isinstance(exc, tuple(cls for cls in loaded if isinstance(cls, type)))


#: An error line's length at most, ``uniroute <command>: `` included (the errors themselves aim shorter).
MAX_ERROR_CHARS = 300


def _one_line(message: object, prefix: str) -> str:
    """``prefix`` and a message (a catalog's list of problems: several lines) in one line of at most
    :data:`MAX_ERROR_CHARS` characters."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    line = prefix + "".join(
        line if i == 0 else (" " if lines[i - 1].endswith(":") else "; ") + line for i, line in enumerate(lines)
    )
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``uniroute``: a user error is one line on stderr and exit code 2; an unexpected error is one
    line and exit code 1. ``--debug`` raises either instead, traceback included."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's own parser, with a hint for the old `--candidates a b` spelling
        hint = (
            "; --candidates takes one comma-separated list: --candidates a,b"
            if getattr(args, "candidates", None)
            else ""
        )
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"uniroute {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if _is_user_error(exc):
            print(_one_line(exc, f"uniroute {args.command}: "), file=sys.stderr)
            return 2
        hint = " (run again with --debug for the traceback)"
        print(
            _one_line(exc, f"uniroute {args.command}: unexpected {type(exc).__name__}: ")[: MAX_ERROR_CHARS - len(hint)]
            + hint,
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
