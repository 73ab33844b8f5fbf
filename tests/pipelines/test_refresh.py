"""`uniroute refresh` end to end on a user's results table: imported with the CLI, refreshed to a champion with
nothing else run by hand; refreshed again, nothing launched; beside the daemon's own iterations, neither launches
a run the other did."""

from __future__ import annotations

import contextlib
import io
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pipelines.cli import main

from .test_demo import _daemon_iterations

pytestmark = pytest.mark.e2e  # a whole pipeline, end to end

#: The fixture's LLMs imported first, and the one imported afterwards.
FIRST, LATER = ["math-pro", "history-pro", "bio-pro", "cheap"], "generalist"


def _results(mmlu_like_dir, models: list[str]) -> pl.DataFrame:
    """The fixture's answers of ``models`` as a long results table with prompts, categories and per-query costs."""
    questions = pl.read_parquet(mmlu_like_dir / "questions.parquet")
    answers = pl.read_parquet(mmlu_like_dir / "responses.parquet").filter(pl.col("model").is_in(models))
    return answers.join(questions, on="question_id").select(
        "model",
        pl.format("q{}", "question_id").alias("prompt_id"),
        pl.col("correct").cast(pl.Float64).alias("score"),
        pl.col("question").alias("prompt"),
        "category",
        (pl.col("response").str.len_chars() * 1e-6).alias("cost_usd"),
    )


def _home_env(path: Path, patch: pytest.MonkeyPatch) -> Path:
    """``path`` as the data home: its Dagster home, warehouse and catalog paths set (no $MLFLOW_TRACKING_URI)."""
    patch.setenv("DAGSTER_HOME", str(path / "dagster"))
    patch.setenv("UNIROUTE_WAREHOUSE", str(path / "warehouse.duckdb"))
    patch.setenv("UNIROUTE_CATALOG", str(path / "llms.yaml"))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return path


def _empty_home(path: Path, patch: pytest.MonkeyPatch) -> Path:
    """An empty data home at ``path``: a Dagster home with the project's dagster.yaml, an empty catalog."""
    from tests.conftest import PROJECT_ROOT

    (path / "dagster").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", path / "dagster")
    (path / "llms.yaml").write_text("llms:\n")
    return _home_env(path, patch)


@pytest.fixture
def home(tmp_path, monkeypatch, without_defs_state):
    """An empty data home: a Dagster home with the project's dagster.yaml, warehouse and catalog paths set."""
    with without_defs_state():
        yield _empty_home(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def _refreshed_once(tmp_path_factory, mmlu_like_dir, without_defs_state) -> tuple[Path, str]:
    """A data home where FIRST's results were imported and refreshed to a champion, built once per module (read
    only: tests take a copy, :func:`refreshed`); with what that first refresh printed."""
    with pytest.MonkeyPatch.context() as patch, without_defs_state():
        path = _empty_home(tmp_path_factory.mktemp("refreshed") / "home", patch)
        _import(path, mmlu_like_dir, FIRST, "first")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["refresh"]) == 0
    return path, out.getvalue()


@pytest.fixture
def refreshed(_refreshed_once, tmp_path, monkeypatch, without_defs_state) -> tuple[Path, str]:
    """This test's own copy of :func:`_refreshed_once` (the registry's artifact URIs follow the copy), set as the
    data home; with what its first refresh printed."""
    from serving.registry import follow_moved_artifacts

    built, out = _refreshed_once
    path = shutil.copytree(built, tmp_path / "home")
    follow_moved_artifacts(path / "mlflow" / "mlflow.db")
    with without_defs_state():
        yield _home_env(path, monkeypatch), out


def _import(home, mmlu_like_dir, models: list[str], name: str) -> None:
    """``models``' results imported with the CLI, each first added to the catalog as import-only and synced."""
    catalog = home / "llms.yaml"
    catalog.write_text(catalog.read_text() + "".join(f"  - {{name: {m}, base_url: null}}\n" for m in models))
    assert main(["sync-catalog", str(catalog)]) == 0
    path = home / f"{name}.parquet"
    _results(mmlu_like_dir, models).write_parquet(path)
    assert main(["import-results", str(path), "--dataset", "mine"]) == 0


def _runs(home) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.get() as instance:
        return instance.get_runs()


def test_import_then_refresh_reaches_a_champion_and_again_launches_nothing(refreshed, mmlu_like_dir, capsys):
    home, out = refreshed  # FIRST imported, then refreshed
    assert "sensor run: profile cheap" in out and "automation: router" in out
    assert "router uniroute v1 registered, alias champion" in out, out
    assert main(["models"]) == 0  # the champion routes among the imported LLMs
    assert sorted(line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]) == sorted(FIRST)

    runs = len(_runs(home))
    assert main(["refresh"]) == 0
    assert "up to date; nothing launched" in capsys.readouterr().out
    assert len(_runs(home)) == runs

    # one more LLM's results: its profiling run, its features with the same map, router v2 (nothing else)
    _import(home, mmlu_like_dir, [LATER], "later")
    assert main(["refresh"]) == 0
    out = capsys.readouterr().out
    assert f"sensor run: profile {LATER}" in out and "automation: cluster_map" not in out
    assert "router uniroute v2 registered" in out and "sensor run: profile cheap" not in out


def test_refresh_and_the_daemon_never_launch_what_the_other_did(refreshed, mmlu_like_dir, capsys):
    from pipelines.sensors import llm_onboarding_sensor
    from pipelines.ticks import RUN_KEY_TAG, daemon_workspace, load_sensor_cursor, store_sensor_cursor

    home = refreshed[0]  # FIRST imported, then refreshed
    _import(home, mmlu_like_dir, [LATER], "later")
    with dg.DagsterInstance.get() as instance, daemon_workspace(instance) as workspace:
        before = load_sensor_cursor(instance, llm_onboarding_sensor.name)
        # the daemon ticks first: it launches the new LLM's profiling run (queued: no run queue runs here)
        _daemon_iterations(workspace, datetime.now(UTC), ticks=1)
        launched = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == LATER]
        assert len(launched) == 1 and launched[0].status == dg.DagsterRunStatus.QUEUED
        # refresh read the sensor's cursor before the daemon stored its own: its tick requests the same run key
        store_sensor_cursor(instance, llm_onboarding_sensor, before)
    capsys.readouterr()
    assert main(["refresh"]) == 0
    out = capsys.readouterr().out
    assert f"profile {LATER}" not in out and "up to date; nothing launched" in out  # the daemon's run is pending
    key = launched[0].tags[RUN_KEY_TAG]
    assert [r.run_id for r in _runs(home) if r.tags.get(RUN_KEY_TAG) == key] == [launched[0].run_id]

    with dg.DagsterInstance.get() as instance, daemon_workspace(instance) as workspace:
        runs = instance.get_runs_count()
        _daemon_iterations(workspace, datetime.now(UTC), ticks=2)  # and the daemon launches nothing refresh did
        assert instance.get_runs_count() == runs


def test_refresh_without_an_instance_or_data_is_one_line_and_exit_2(home, monkeypatch, capsys):
    assert main(["refresh"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniroute refresh: nothing to refresh: no warehouse at") and len(err.splitlines()) == 1
    monkeypatch.delenv("DAGSTER_HOME")
    assert main(["refresh"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniroute refresh: DAGSTER_HOME is not set") and len(err.splitlines()) == 1
