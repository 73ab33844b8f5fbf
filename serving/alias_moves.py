"""Every move of a registry alias (``champion``, ``challenger``, ``previous-champion``), made and recorded here: who
or what moved it, when, why, from which version to which.

A move is an MLflow run of its own in the experiment :data:`EXPERIMENT`, tagged (``model``, ``alias``,
``from_version``, ``to_version``, ``moved_by``, ``reason``) and named ``<model>@<alias>: <from> -> <to>``; its start
time is when. Runs rather than model-version tags: a version tag keeps only its latest value, while runs keep the
whole history, one row per move, which MLflow's run search (``tags.alias = 'champion'``), its UI and
:func:`read_moves` all query (the reason is also the run's description, readable in the UI's run list).

Moves by the pipeline's gate (:func:`serving.registry.promote`), by the rollout sensor and by hand
(``uniroute promote`` / ``uniroute rollback``: :func:`promote_version`, :func:`rollback`) all pass through
:func:`move_alias` or :func:`remove_alias`.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow.tracking import MlflowClient

from serving import registry_files

#: The experiment holding one run per alias move.
EXPERIMENT = "uniroute-alias-moves"
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous-champion"
#: The ``to_version`` tag of a move that removed the alias.
REMOVED = "none"


class AliasMoveError(ValueError):
    """A move that cannot be made (an unknown version, no previous-champion to roll back to): one line."""


@dataclass(frozen=True)
class AliasMove:
    """One recorded move: ``to_version`` None means the alias was removed, ``from_version`` None that it was new."""

    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    moved_by: str
    reason: str
    moved_at: datetime  # UTC
    run_id: str = ""


def by_hand() -> str:
    """``moved_by`` of a move made on the command line: ``cli:<user name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "cli:unknown"


def alias_version(model: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when it is not set (or the model is not registered)."""
    try:
        return str(MlflowClient().get_model_version_by_alias(model, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def move_alias(model: str, alias: str, version: str, moved_by: str, reason: str) -> AliasMove | None:
    """Point ``alias`` at ``version`` and record the move; None (nothing recorded) when it points there already."""
    before = alias_version(model, alias)
    if before == str(version):
        return None
    MlflowClient().set_registered_model_alias(model, alias, str(version))
    return _record(model, alias, before, str(version), moved_by, reason)


def remove_alias(model: str, alias: str, moved_by: str, reason: str) -> AliasMove | None:
    """Remove ``alias`` and record the move; None when it was not set."""
    before = alias_version(model, alias)
    if before is None:
        return None
    MlflowClient().delete_registered_model_alias(model, alias)
    return _record(model, alias, before, None, moved_by, reason)


def _record(model: str, alias: str, before: str | None, after: str | None, moved_by: str, reason: str) -> AliasMove:
    """One run in :data:`EXPERIMENT` for the move (finished at once: a record, not a job)."""
    client = MlflowClient()
    tags = {
        "model": model,
        "alias": alias,
        "from_version": before or REMOVED,
        "to_version": after or REMOVED,
        "moved_by": moved_by,
        "reason": reason,
        "mlflow.note.content": reason,  # the run's description in the UI
    }
    name = f"{model}@{alias}: {before or REMOVED} -> {after or REMOVED}"
    run = client.create_run(_experiment_id(), run_name=name, tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    moved_at = datetime.fromtimestamp(run.info.start_time / 1000, UTC)
    return AliasMove(model, alias, before, after, moved_by, reason, moved_at, run.info.run_id)


def _experiment_id() -> str:
    """:data:`EXPERIMENT`'s id, created on the first move (artifacts beside a sqlite registry, as the pipeline's)."""
    database = registry_files.sqlite_path(mlflow.get_tracking_uri())
    if database is None:
        found = mlflow.get_experiment_by_name(EXPERIMENT)
        return found.experiment_id if found else mlflow.create_experiment(EXPERIMENT)
    from serving.registry import ensure_experiment  # registry imports this module: late, to avoid the cycle

    return ensure_experiment(EXPERIMENT, database.resolve().parent / "artifacts")


def read_moves(model: str, alias: str | None = None) -> list[AliasMove]:
    """The recorded moves of ``model``'s aliases (``alias``'s only, when given), newest first."""
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    where = [f"tags.model = '{_quoted(model)}'"] + ([f"tags.alias = '{_quoted(alias)}'"] if alias else [])
    runs = MlflowClient().search_runs(
        [experiment.experiment_id], " and ".join(where), order_by=["attributes.start_time DESC"], max_results=10_000
    )
    return [_move(run) for run in runs]


def _quoted(text: str) -> str:
    """``text`` inside single quotes of an MLflow filter."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _move(run) -> AliasMove:
    tags = run.data.tags

    def version(key: str) -> str | None:
        return None if tags.get(key, REMOVED) == REMOVED else tags[key]

    return AliasMove(
        tags["model"],
        tags["alias"],
        version("from_version"),
        version("to_version"),
        tags.get("moved_by", ""),
        tags.get("reason", ""),
        datetime.fromtimestamp(run.info.start_time / 1000, UTC),
        run.info.run_id,
    )


def last_moved_at(model: str, alias: str) -> datetime | None:
    """When ``alias`` last moved (None: no recorded move)."""
    moves = read_moves(model, alias)
    return moves[0].moved_at if moves else None


def promote_version(model: str, version: str, moved_by: str, reason: str) -> list[AliasMove]:
    """Make ``version`` the champion: ``previous-champion`` keeps the version ``champion`` leaves, and a
    ``challenger`` pointing at ``version`` is removed (it is no longer challenging). Returns the moves made (none
    when ``version`` is the champion already)."""
    _require_reason(reason)
    _require_version(model, version)
    current = alias_version(model, CHAMPION)
    if current == str(version):
        return []
    moves = []
    if current is not None:
        moves.append(move_alias(model, PREVIOUS_CHAMPION, current, moved_by, reason))
    moves.append(move_alias(model, CHAMPION, version, moved_by, reason))
    if alias_version(model, CHALLENGER) == str(version):
        moves.append(remove_alias(model, CHALLENGER, moved_by, reason))
    return [m for m in moves if m is not None]


def rollback(model: str, moved_by: str, reason: str) -> list[AliasMove]:
    """Move ``champion`` back to ``previous-champion``'s version, then remove ``previous-champion`` (the version
    rolled back from is never a rollback target: a second rollback is an error until a new promotion)."""
    _require_reason(reason)
    previous = alias_version(model, PREVIOUS_CHAMPION)
    if previous is None:
        raise AliasMoveError(f"model {model!r} has no {PREVIOUS_CHAMPION} alias: nothing to roll back to")
    moves = [move_alias(model, CHAMPION, previous, moved_by, reason)]
    moves.append(remove_alias(model, PREVIOUS_CHAMPION, moved_by, reason))
    return [m for m in moves if m is not None]


def _require_reason(reason: str) -> None:
    if not reason.strip():
        raise AliasMoveError(f"reason={reason!r}: say why the alias moves (it is recorded with the move)")


def _require_version(model: str, version: str) -> None:
    """``version`` must be a registered version of ``model``."""
    if not str(version).isdigit():
        raise AliasMoveError(f"version={version!r}: expected a version number of model {model!r}, e.g. 3")
    try:
        MlflowClient().get_model_version(model, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise AliasMoveError(f"version={version!r}: model {model!r} has no such version") from exc
