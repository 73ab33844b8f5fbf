"""`uniroute refresh` end to end on a user's results table: imported with the CLI, refreshed to a champion with
nothing else run by hand; refreshed again, nothing launched; beside the daemon's own iterations, neither launches
a run the other did."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime

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


@pytest.fixture
def home(tmp_path, monkeypatch, without_defs_state):
    """An empty data home: a Dagster home with the project's dagster.yaml, warehouse and catalog paths set."""
    from tests.conftest import PROJECT_ROOT

    (tmp_path / "dagster").mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("UNIROUTE_CATALOG", str(tmp_path / "llms.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "llms.yaml").write_text("llms:\n")
    with without_defs_state():
        yield tmp_path


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


def test_import_then_refresh_reaches_a_champion_and_again_launches_nothing(home, mmlu_like_dir, capsys):
    _import(home, mmlu_like_dir, FIRST, "first")
    capsys.readouterr()
    assert main(["refresh"]) == 0
    out = capsys.readouterr().out
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


def test_refresh_and_the_daemon_never_launch_what_the_other_did(home, mmlu_like_dir, capsys):
    from pipelines.sensors import llm_onboarding_sensor
    from pipelines.ticks import RUN_KEY_TAG, daemon_workspace, load_sensor_cursor, store_sensor_cursor

    _import(home, mmlu_like_dir, FIRST, "first")
    assert main(["refresh"]) == 0
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


# ---- a held-out-style evaluation table: task families, per-query costs, LLMs with their own strengths ----------
FAMILIES = {
    "geography": "Which river flows through the capital of province {i} on the {side} coast of the map?",
    "arithmetic": "Compute {i} multiplied by {j}, then subtract {k} and report the integer result.",
    "chemistry": "Balance the equation for the combustion of hydrocarbon number {i} with {j} oxygen atoms.",
    "law": "Under contract law, is verbal agreement number {i} between {side} parties enforceable after {j} days?",
    "poetry": "Write a short poem of {j} lines about autumn leaf number {i} falling on the {side} bank.",
}
#: LLM -> (accuracy on its strong families, accuracy elsewhere, USD per query). v1's LLMs cost $0.010-0.020 a
#: query; tiny-specialist, held back, costs $0.0005: v2's cost range starts 20x lower, where every router is less
#: accurate, so v2's AUDC over its own range is lower though it routes at least as well at every budget v1 reaches.
LLMS = {
    "atlas-large": ({}, 0.92, 0.020),
    "mathy-medium": ({"arithmetic": 0.95, "chemistry": 0.9}, 0.35, 0.011),
    "wordy-medium": ({"law": 0.95, "poetry": 0.9}, 0.35, 0.011),
    "geo-small": ({"geography": 0.9}, 0.25, 0.010),
    "mid-general": ({}, 0.62, 0.014),
    "tiny-specialist": ({"geography": 0.9, "arithmetic": 0.9}, 0.15, 0.0005),
    "new-generalist": ({}, 0.8, 0.016),
}
HELD_BACK = ["tiny-specialist", "new-generalist"]


def _draw(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by ``parts``."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 16**8


def _held_out_table(per_family: int = 80, costs: bool = True) -> pl.DataFrame:
    sides = ["north", "south", "east", "west"]
    rows = []
    for family, template in FAMILIES.items():
        for i in range(per_family):
            prompt = template.format(i=i, j=(i * 7) % 13 + 2, k=i % 9, side=sides[i % 4])
            for model, (strong, other, usd) in LLMS.items():
                right = _draw(model, family, i) < strong.get(family, other)
                row = {"model": model, "prompt_id": f"{family}-{i}", "prompt": prompt, "category": family}
                row |= {"score": float(right), "response": f"{'right' if right else 'wrong'} answer {i}"}
                if costs:
                    row["cost_usd"] = usd * (0.8 + 0.4 * _draw("cost", model, family, i))
                rows.append(row)
    return pl.DataFrame(rows)


def _router_meta(instance: dg.DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey("router"))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_a_held_out_table_onboards_two_llms_one_cheaper_than_all_into_the_champion(home, capsys):
    from assets.router import router
    from pipelines.definitions import defs

    path = home / "held_out.parquet"
    _held_out_table().write_parquet(path)
    assert main(["import-results", str(path), "--dataset", "held_out", "--exclude-models", *HELD_BACK]) == 0
    assert main(["refresh"]) == 0
    assert "router uniroute v1 registered, alias champion" in capsys.readouterr().out
    with dg.DagsterInstance.get() as instance:
        v1 = _router_meta(instance)

    # the two held back arrive: tiny-specialist is cheaper than every LLM of v1, which widens the cost range
    assert main(["import-results", str(path), "--dataset", "held_out", "--models", *HELD_BACK]) == 0
    assert main(["refresh"]) == 0
    out = capsys.readouterr().out
    assert "router uniroute v2 registered, alias champion" in out, out
    with dg.DagsterInstance.get() as instance:
        v2 = _router_meta(instance)
        assert v2["cluster_map_version"] == v1["cluster_map_version"]  # no retraining: the same map
        assert set(HELD_BACK) <= set(_pool(v2)) and not set(HELD_BACK) & set(_pool(v1))
        # a re-run of the router registers nothing: it equals v2
        again = dg.materialize([router], instance=instance, resources=defs.resources)
        meta = {k: v.value for k, v in again.asset_materializations_for_node("router")[0].metadata.items()}
        assert meta["version"] == "2" and str(meta["status"]).startswith("unchanged")
    assert main(["refresh"]) == 0
    assert "up to date; nothing launched" in capsys.readouterr().out


def test_a_table_without_costs_is_refused_naming_its_llms_then_reaches_a_champion_with_a_price_file(home, capsys):
    path = home / "no_costs.csv"
    _held_out_table(per_family=40, costs=False).filter(~pl.col("model").is_in(HELD_BACK)).write_csv(path)
    capsys.readouterr()
    assert main(["import-results", str(path), "--dataset", "no_costs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) <= 300, err
    assert all(m in err for m in ["atlas-large", "geo-small"]), err
    assert main(["refresh"]) == 2  # nothing was written: no prompts to build from
    assert "nothing to refresh" in capsys.readouterr().err

    prices = home / "prices.csv"
    rows = [f"{m},{usd}" for m, (_, _, usd) in LLMS.items() if m not in HELD_BACK]
    prices.write_text("model,usd_per_query\n" + "\n".join(rows) + "\n")
    assert main(["import-results", str(path), "--dataset", "no_costs", "--price-file", str(prices)]) == 0
    assert main(["refresh"]) == 0
    assert "router uniroute v1 registered, alias champion" in capsys.readouterr().out
    card = _client().get_model_version_by_alias("uniroute", "champion").description
    assert "| cost basis |" in card and card.count("| price per query |") == len(rows)  # the card says how


def _client():
    from mlflow.tracking import MlflowClient

    from serving.registry import default_tracking_uri

    return MlflowClient(default_tracking_uri(), default_tracking_uri())


def _pool(meta: dict) -> list[str]:
    return [name.strip() for name in str(meta["pool"]).split(",") if name.strip()]
