"""A sqlite MLflow registry's files, read (and re-rooted) with the standard library alone: fast for the CLI, which
needs one version's router files, not MLflow's stack (:mod:`serving.registry` holds the MLflow side).

A sqlite registry records where its artifacts lie relative to the database file (experiment tag
:data:`ARTIFACT_ROOT_TAG`), so a data home moved or copied elsewhere is re-rooted by :func:`follow_moved_artifacts`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

#: Experiment tag: the artifact root relative to the sqlite file's folder (how a moved registry is re-rooted).
ARTIFACT_ROOT_TAG = "uniroute.artifact_root_from_registry"


class RegistryLookupError(LookupError):
    """A model URI that names nothing in the registry (an unknown model, alias or version)."""


def default_mlflow_dir() -> Path:
    """``<data home>/mlflow``: the sqlite registry and the artifacts, beside the warehouse file."""
    import warehouse as wh

    return wh.default_path().parent / "mlflow"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the sqlite file in :func:`default_mlflow_dir`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_mlflow_dir() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory unless absolute), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def sqlite_tables(database: Path, con: sqlite3.Connection | None = None) -> set[str]:
    """The table names of a sqlite file, read through ``con`` or a read-only connection (looking changes nothing)."""
    if con is not None:
        return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as ro:
        return sqlite_tables(database, ro)


def follow_moved_artifacts(database: Path) -> int:
    """Re-root the artifact URIs a sqlite registry stores when it no longer lies where it was created.

    MLflow stores absolute artifact URIs (experiments, runs, logged models, model versions, traces) and has no
    relative form for a file store, so a copied registry would read, and write, the original's artifacts. Each
    experiment tagged with :data:`ARTIFACT_ROOT_TAG` whose root, taken relative to ``database``'s folder, is an
    existing folder other than the stored one gets every URI under the stored root rewritten to it, in one
    transaction. A registry that did not move is only read. Returns the number of experiments re-rooted.
    """
    moves = _moved_roots(database)
    if not moves:
        return 0
    con = sqlite3.connect(f"{database.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    try:
        tables = sqlite_tables(database, con)
        with con:  # one transaction: all URIs move, or none
            for experiment_id, old, new in moves:
                _rewrite_prefix(con, tables, experiment_id, old, new)
    finally:
        con.close()
    return len(moves)


def _moved_roots(database: Path) -> list[tuple[str, str, str]]:
    """``(experiment_id, stored root URI, root URI now)`` of each tagged experiment whose artifacts moved."""
    folder = database.resolve().parent
    con = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        tables = sqlite_tables(database, con)
        if not {"experiments", "experiment_tags"} <= tables:
            return []  # not (yet) an MLflow database
        rows = con.execute(
            "SELECT e.experiment_id, e.artifact_location, t.value FROM experiments e "
            "JOIN experiment_tags t ON t.experiment_id = e.experiment_id AND t.key = ?",
            [ARTIFACT_ROOT_TAG],
        ).fetchall()
    finally:
        con.close()
    roots = [(experiment_id, stored, (folder / relative).resolve()) for experiment_id, stored, relative in rows]
    return [(e, stored, root.as_uri()) for e, stored, root in roots if root.is_dir() and root.as_uri() != stored]


def _rewrite_prefix(con: sqlite3.Connection, tables: set[str], experiment_id: str, old: str, new: str) -> None:
    """Every stored URI equal to ``old`` or under it, rewritten under ``new``."""
    columns = [  # table, column, and which of its rows belong to the experiment
        ("experiments", "artifact_location", " AND experiment_id = ?", [experiment_id]),
        ("runs", "artifact_uri", " AND experiment_id = ?", [experiment_id]),
        ("logged_models", "artifact_location", " AND experiment_id = ?", [experiment_id]),
        ("model_versions", "storage_location", "", []),
        ("model_versions", "source", "", []),
        ("trace_tags", "value", " AND key = 'mlflow.artifactLocation'", []),
    ]
    for table, column, scope, scope_params in columns:
        if table in tables:
            con.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                f"WHERE ({column} = ? OR substr({column}, 1, ?) = ?){scope}",
                [new, len(old) + 1, old, len(old) + 1, old + "/", *scope_params],
            )


def router_dir(database: Path, model_uri: str) -> Path | None:
    """The router directory of the version ``model_uri`` (``models:/<name>@<alias>`` or ``models:/<name>/<version>``)
    names in the sqlite registry ``database``, read from its files; None when that takes MLflow (another URI form,
    artifacts not on this file system). :class:`RegistryLookupError` when the name, alias or version is unknown."""
    name, version = _version_of(database, model_uri)
    if name is None:
        return None
    with _read_only(database) as con:
        row = con.execute(
            "SELECT storage_location FROM model_versions WHERE name = ? AND version = ?", [name, version]
        ).fetchone()
    if row is None:
        raise RegistryLookupError(f"registered model {name!r} has no version {version}")
    location = urlparse(row[0] or "")
    if location.scheme not in ("", "file"):
        return None
    model_dir = Path(unquote(location.path))
    return _artifact(model_dir, "router")


def model_version(database: Path, model_uri: str) -> str | None:
    """The version ``model_uri`` names in the sqlite registry ``database`` (None for other URI forms);
    :class:`RegistryLookupError` when the name or alias is unknown."""
    version = _version_of(database, model_uri)[1]
    return None if version is None else str(version)


def _version_of(database: Path, model_uri: str) -> tuple[str | None, int | None]:
    """(name, version) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``; (None, None) for other URIs."""
    if not model_uri.startswith("models:/"):
        return None, None
    rest = model_uri.removeprefix("models:/")
    name, at, alias = rest.partition("@")
    if at:
        with _read_only(database) as con:
            row = con.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", [name, alias]
            ).fetchone()
            known = row is not None or con.execute("SELECT 1 FROM registered_models WHERE name = ?", [name]).fetchone()
        if row is None:
            raise RegistryLookupError(
                f"registered model {name!r} has no alias {alias!r}" if known else f"no registered model {name!r}"
            )
        return name, int(row[0])
    name, slash, version = rest.partition("/")
    return (name, int(version)) if slash and version.isdigit() else (None, None)


def _artifact(model_dir: Path, key: str) -> Path | None:
    """The pyfunc artifact ``key``'s directory under a logged model's folder (its ``MLmodel`` names it)."""
    import yaml

    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        relative = mlmodel["flavors"]["python_function"]["artifacts"][key]["path"]
    except (OSError, KeyError, TypeError):
        return None  # not a model this code logged: MLflow's own loader says what is wrong
    return model_dir / relative


@contextlib.contextmanager
def _read_only(database: Path):
    con = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        yield con
    finally:
        con.close()
