"""``uniroute promote VERSION --reason TEXT`` and ``uniroute rollback --reason TEXT``: the registry's aliases moved
by hand, each move recorded with who, when, why, from and to (:mod:`serving.alias_moves`). Gateways follow the
``champion`` alias within their reload interval."""

from __future__ import annotations

import argparse

# Only the standard library and serving.cli (itself standard library only) here: `uniroute --help` stays fast.
from serving.cli import CommandError, _tracking_uri

DEFAULT_MODEL = "uniroute"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add promote and rollback to ``commands``."""

    def with_registry(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--reason", required=True, help="why (recorded with the move; required)")
        sub.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
        sub.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (see above)")
        return sub

    promote = with_registry(
        commands.add_parser(
            "promote",
            help="make a router version the champion, by hand",
            description="Point champion at VERSION; previous-champion keeps the version it leaves (what `uniroute "
            "rollback` returns to). Recorded in the MLflow experiment uniroute-alias-moves.",
        )
    )
    promote.add_argument("version", metavar="VERSION", help="a registered version number, e.g. 3")
    promote.set_defaults(run=_promote)
    rollback = with_registry(
        commands.add_parser(
            "rollback",
            help="move champion back to previous-champion's version",
            description="Point champion at previous-champion's version and remove previous-champion. Recorded in "
            "the MLflow experiment uniroute-alias-moves.",
        )
    )
    rollback.set_defaults(run=_rollback)


def _moves(args: argparse.Namespace, move) -> int:
    """Configure the registry, make the move by hand, print each alias moved."""
    from serving import alias_moves, registry

    registry.configure(_tracking_uri(args))
    try:
        moves = move(alias_moves, alias_moves.by_hand())
    except alias_moves.AliasMoveError as exc:
        raise CommandError(str(exc)) from exc
    for m in moves:
        print(f"{m.model}@{m.alias}: {m.from_version or 'none'} -> {m.to_version or 'none'} ({m.moved_by}: {m.reason})")
    if not moves:
        print(f"{args.model}@champion is that version already: nothing moved")
    return 0


def _promote(args: argparse.Namespace) -> int:
    return _moves(args, lambda am, who: am.promote_version(args.model, args.version, who, args.reason))


def _rollback(args: argparse.Namespace) -> int:
    return _moves(args, lambda am, who: am.rollback(args.model, who, args.reason))
