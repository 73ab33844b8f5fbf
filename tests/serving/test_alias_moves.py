"""Every alias move recorded in a real sqlite MLflow registry: by the pipeline's gate (registry.promote), and by
hand (`uniroute promote VERSION --reason`, `uniroute rollback --reason`), with one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.cli import main
from serving import alias_moves, registry

from .conftest import register_fixture_router


@pytest.fixture(scope="module")
def _registered(tmp_path_factory, mmlu_like_dir, onnx_cache) -> tuple[Path, list[str]]:
    """(folder, [v1, v2, v3]): a sqlite registry (artifacts beside it) with three versions and no alias, registered
    once per module. Read only: :func:`versions` copies it."""
    import mlflow

    home = tmp_path_factory.mktemp("alias_moves") / "home"
    home.mkdir()
    registry.configure(f"sqlite:///{home / 'mlflow.db'}")
    try:
        v1 = register_fixture_router(home, mmlu_like_dir, ["cheap", "generalist"], onnx_cache)
        experiment = registry.ensure_experiment("uniroute", home / "artifacts")
        v2, v3 = (
            registry.register_router(home / "router-2", "uniroute", experiment, {}, {}, {}, {}, ["hi"]) for _ in "ab"
        )
    finally:
        mlflow.set_tracking_uri(None)
    return home, [v1, v2, v3]


@pytest.fixture
def versions(_registered, tmp_path):
    """(tracking URI, [v1, v2, v3]) in this test's own copy of :func:`_registered`'s registry; MLflow pointed at it
    (its artifact URIs re-rooted to the copy); no alias set."""
    import mlflow

    built, registered = _registered
    home = shutil.copytree(built, tmp_path / "home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    registry.configure(uri)
    yield uri, registered
    mlflow.set_tracking_uri(None)


def _aliases() -> dict[str, str]:
    import mlflow

    return {a: str(v) for a, v in mlflow.MlflowClient().get_registered_model("uniroute").aliases.items()}


def _moves(alias: str | None = None) -> list[tuple[str, str | None, str | None, str, str]]:
    """(alias, from, to, moved_by, reason) of each recorded move, oldest first."""
    return [
        (m.alias, m.from_version, m.to_version, m.moved_by, m.reason) for m in alias_moves.read_moves("uniroute", alias)
    ][::-1]


def test_the_pipelines_gate_records_each_move_with_its_reason(versions):
    import mlflow

    _, (v1, v2, v3) = versions
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v2, better=True, reason="AUDC 0.71 vs 0.69")
    registry.promote("uniroute", v3, better=False, reason="AUDC 0.60 vs 0.71")
    registry.promote("uniroute", v2, better=True, reason="again")  # moves nothing, records nothing
    gate = registry.PIPELINE
    assert _moves() == [
        ("champion", None, "1", gate, "the pipeline's gate: better than the champion, or no champion yet"),
        ("previous-champion", None, "1", gate, "AUDC 0.71 vs 0.69"),
        ("champion", "1", "2", gate, "AUDC 0.71 vs 0.69"),
        ("challenger", None, "3", gate, "AUDC 0.60 vs 0.71"),
    ]
    # a user queries them with MLflow's own search: one run per move, the reason a tag
    runs = mlflow.search_runs(experiment_names=[alias_moves.EXPERIMENT], filter_string="tags.alias = 'champion'")
    assert sorted(runs["tags.to_version"]) == ["1", "2"] and "AUDC 0.71 vs 0.69" in set(runs["tags.reason"])
    moved = alias_moves.read_moves("uniroute", "champion")[0]
    assert moved.moved_at.tzinfo is not None and moved.run_id in set(runs["run_id"])


def test_promote_and_rollback_by_hand_record_who_and_why(versions, capsys):
    uri, (v1, v2, _) = versions
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v2, better=False)  # v2 challenges
    assert main(["promote", v2, "--reason", "canary held for a week", "--tracking-uri", uri]) == 0
    assert _aliases() == {"champion": "2", "previous-champion": "1"}  # the challenger was promoted: no longer one
    printed = capsys.readouterr().out
    assert "uniroute@champion: 1 -> 2" in printed and "canary held for a week" in printed
    hand = alias_moves.by_hand()
    assert hand.startswith("cli:")
    assert _moves()[-3:] == [
        ("previous-champion", None, "1", hand, "canary held for a week"),
        ("champion", "1", "2", hand, "canary held for a week"),
        ("challenger", "2", None, hand, "canary held for a week"),
    ]

    assert main(["rollback", "--reason", "observed error up", "--tracking-uri", uri]) == 0
    assert _aliases() == {"champion": "1"}
    assert _moves()[-2:] == [
        ("champion", "2", "1", hand, "observed error up"),
        ("previous-champion", "1", None, hand, "observed error up"),
    ]
    capsys.readouterr()
    assert main(["rollback", "--reason", "again", "--tracking-uri", uri]) == 2  # nothing left to roll back to
    err = capsys.readouterr().err
    assert err.startswith("uniroute rollback: ") and "previous-champion" in err and len(err.splitlines()) == 1
    assert _aliases() == {"champion": "1"}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["promote", "9", "--reason", "x"], "version='9'"),
        (["promote", "latest", "--reason", "x"], "version='latest'"),
        (["promote", "2", "--reason", " "], "reason=' '"),
    ],
)
def test_a_bad_move_is_one_line_exit_2_and_moves_nothing(versions, capsys, args, named):
    uri, (v1, *_) = versions
    registry.promote("uniroute", v1, better=True)
    before = _moves()
    assert main([*args, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert _aliases() == {"champion": "1"} and _moves() == before


@pytest.mark.parametrize("args", [["promote", "2"], ["rollback"]])
def test_the_reason_is_required(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--reason" in err and len(err.strip().splitlines()) == 1
