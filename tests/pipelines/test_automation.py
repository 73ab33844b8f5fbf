"""Declarative automation on a real instance: features and the router follow new grades without a manual run,
a new LLM never retrains the cluster map, and a re-pointed LLM is re-profiled (on part of its validation prompts
first, as a new LLM, then refined to all of them) with its drift reported."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import dagster as dg
import pytest

import warehouse as wh
from assets import profiling
from assets.resources import ArtifactsResource, MlflowResource
from assets.routing import cluster_map
from pipelines.definitions import defs
from pipelines.progress import refine
from pipelines.sensors import llm_onboarding_sensor
from pipelines.ticks import AutomationTicks, daemon_workspace, sensor_tick
from replay import ReplayServer
from router_core.onboarding import DEFAULT_ONBOARDING_FRACTION
from tests.conftest import PROJECT_ROOT, ui_stale_statuses

pytestmark = pytest.mark.e2e  # a whole pipeline or server, end to end

ALL_SPLITS = {"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}}


class Pipeline:
    """A replay endpoint, a catalog file, and the daemon's work done in-process."""

    def __init__(self, instance, tmp_path, server, data_dir, shares=None, setup_runs=None):
        """Turns the daemon on, then materialises an empty catalog and ``data_dir``'s prompts (split by ``shares``)
        and lets automation embed them; given the ``setup_runs`` that did so, ``tmp_path`` already holds their
        result (a copy of :func:`_set_up`'s)."""
        self.instance, self.server, self.catalog = instance, server, tmp_path / "llms.yaml"
        self.resources = {
            **defs.resources,
            "artifacts": ArtifactsResource(root=str(tmp_path / "artifacts")),
            "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        }
        self.outcomes: dict[tuple[str, str | None], dg.ExecuteInProcessResult] = {}
        self.ticks = AutomationTicks(defs, instance, self.resources, on_run=self._record)
        self.cursor = None
        if setup_runs is not None:
            self.setup_runs = setup_runs
            return
        assert self.ticks.tick() == []  # the daemon is on before anything is materialised
        self.write_catalog({})
        prompts = {"prompt_set": {"config": {"path": str(data_dir), "shares": shares}}}
        assets = [profiling.llm_catalog, profiling.prompt_set]
        assert dg.materialize(assets, instance=instance, resources=self.resources, run_config={"ops": prompts}).success
        self.setup_runs = self.ticks.until_idle()

    def _record(self, names, partition, outcome, seconds) -> None:
        for name in names:
            self.outcomes[(name, partition)] = outcome

    def write_catalog(self, llms: dict[str, str], prices: dict[str, float] | None = None) -> None:
        """``llms``: name -> model id behind it; ``prices``: USD per million tokens (default 1)."""
        prices = prices or {}
        entries = ", ".join(
            f"{{name: {name}, model_id: {model_id}, usd_per_mtok_in: {prices.get(name, 1)}, "
            f"usd_per_mtok_out: {prices.get(name, 1)}}}"
            for name, model_id in llms.items()
        )
        self.catalog.write_text(f"defaults: {{base_url: '{self.server.base_url}'}}\nllms: [{entries}]\n")

    def onboard(self, ops: dict | None = None) -> list[dg.RunRequest]:
        """A sensor tick, then the profiling run it requests for each LLM."""
        tick = sensor_tick(llm_onboarding_sensor, self.instance, self.cursor)
        self.cursor = tick.cursor
        job = defs.resolve_job_def("profile_llm")
        for request in tick.run_requests:
            config = {"ops": {**request.run_config["ops"], **(ops or {})}}
            run = job.execute_in_process(
                partition_key=request.partition_key, run_config=config, instance=self.instance, raise_on_error=False
            )
            assert run.success or request.partition_key == "ghost"  # no answers: its coverage check fails
        return tick.run_requests

    def train_cluster_map(self, n_clusters: int = 3) -> str:
        kmeans = {"cluster_map": {"config": {"kind": "kmeans", "n_clusters": n_clusters}}}
        result = dg.materialize(
            [cluster_map], instance=self.instance, resources=self.resources, run_config={"ops": kmeans}
        )
        return result.asset_materializations_for_node("cluster_map")[0].metadata["version"].value


@pytest.fixture
def server(tmp_path, monkeypatch, mmlu_like_dir):
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("UNIROUTE_CATALOG", str(tmp_path / "llms.yaml"))
    with ReplayServer(mmlu_like_dir) as server:
        yield server


def _set_env(folder: Path, patch: pytest.MonkeyPatch) -> None:
    """``folder``'s Dagster home, warehouse and catalog as the pipeline's."""
    patch.setenv("DAGSTER_HOME", str(folder / "dagster_home"))
    patch.setenv("UNIROUTE_WAREHOUSE", str(folder / "w.duckdb"))
    patch.setenv("UNIROUTE_CATALOG", str(folder / "llms.yaml"))


@pytest.fixture(scope="module")
def _set_up(tmp_path_factory, mmlu_like_dir, without_defs_state) -> tuple[Path, list]:
    """A :class:`Pipeline` set up (default shares) once per module in a folder of its own: (the folder, its
    ``setup_runs``). Read only: :func:`pipeline` copies it."""
    folder = tmp_path_factory.mktemp("automation")
    (folder / "dagster_home").mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", folder / "dagster_home")
    with pytest.MonkeyPatch.context() as patch, ReplayServer(mmlu_like_dir) as server:
        _set_env(folder, patch)
        with dg.DagsterInstance.get() as instance, without_defs_state():
            return folder, Pipeline(instance, folder, server, mmlu_like_dir).setup_runs


@pytest.fixture
def pipeline(_set_up, tmp_path, server, mmlu_like_dir, monkeypatch, without_defs_state):
    """This test's own copy of :func:`_set_up`'s pipeline, on its own instance, replay server and files."""
    folder, setup_runs = _set_up
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    _set_env(tmp_path, monkeypatch)
    with dg.DagsterInstance.get() as instance, without_defs_state():
        yield Pipeline(instance, tmp_path, server, mmlu_like_dir, setup_runs=setup_runs)


def _requested(runs) -> set[tuple[str, str | None]]:
    return {(name, partition) for names, partition in runs for name in names}


def test_features_and_router_follow_new_grades_and_a_new_llm_keeps_the_map(pipeline):
    # New prompts: embedded by automation; the cluster map has no training answers yet, so nothing is fitted.
    assert ("prompt_embeddings", None) in _requested(pipeline.setup_runs)
    pipeline.write_catalog({"cheap": "cheap", "math-pro": "math-pro", "generalist": "generalist", "ghost": "no-such"})
    pipeline.onboard(ALL_SPLITS)
    assert pipeline.ticks.until_idle() == []  # grades alone never retrain the map
    version = pipeline.train_cluster_map()

    first = _requested(pipeline.ticks.until_idle())
    # every LLM whose checks pass gets features for the new map, then one router version; not "ghost"
    assert first == {("llm_error_features", m) for m in ("cheap", "math-pro", "generalist")} | {("router", None)}
    v1 = pipeline.outcomes[("router", None)].asset_materializations_for_node("router")[0].metadata
    assert sorted(_names(v1["pool"].value)) == ["cheap", "generalist", "math-pro"] and v1["version"].value == "1"
    assert v1["deferral_curve"].value.startswith("![deferral_curve.png](data:image/png;base64,")

    pipeline.write_catalog(
        {"cheap": "cheap", "math-pro": "math-pro", "generalist": "generalist", "ghost": "no-such", "bio-pro": "bio-pro"}
    )
    assert [r.partition_key for r in pipeline.onboard()] == ["bio-pro"]
    second = _requested(pipeline.ticks.until_idle())
    assert second == {("llm_error_features", "bio-pro"), ("router", None)}  # no cluster_map, no other LLM
    v2 = pipeline.outcomes[("router", None)].asset_materializations_for_node("router")[0].metadata
    assert "bio-pro" in _names(v2["pool"].value) and v2["cluster_map_version"].value == version


def test_a_repointed_llm_is_reprofiled_and_its_drift_named(instance, tmp_path, server, mmlu_like_dir):
    # 16 validation prompts per topic: enough to tell a real change from noise at 3 standard errors
    shares = {"train": 0.4, "validation": 0.4, "test": 0.2}
    pipeline = Pipeline(instance, tmp_path, server, mmlu_like_dir, shares)
    pipeline.write_catalog({"cheap": "cheap", "math-pro": "math-pro", "history-pro": "history-pro"})
    pipeline.onboard(ALL_SPLITS)
    pipeline.train_cluster_map()
    pipeline.ticks.until_idle()
    features = pipeline.outcomes[("llm_error_features", "math-pro")]
    [check] = features.get_asset_check_evaluations()
    assert check.passed and check.metadata["previous_profile"].value == "none"
    asked_before = sum(pipeline.server.request_log.totals().values())

    # Same name, another model behind it: the sensor notices, the profiling run archives and asks again. A new
    # endpoint version is onboarded as a new LLM: first the default fraction of its validation prompts.
    pipeline.write_catalog({"cheap": "cheap", "math-pro": "history-pro", "history-pro": "history-pro"})
    changed = pipeline.onboard()
    assert [(r.partition_key, r.tags["uniroute/onboarding"]) for r in changed] == [("math-pro", "changed")]
    with wh.connect() as con:
        n_validation = wh.read_prompts(con, splits=["validation"]).height
        n_test = wh.read_prompts(con, splits=["test"]).height
        answered = wh.read_prompts(con).height  # on every split before
        archived = con.sql("SELECT count(*) FROM responses_archive WHERE model = 'math-pro'").fetchall()[0][0]
        first = math.ceil(DEFAULT_ONBOARDING_FRACTION * n_validation)
        assert wh.pending_counts(con).rows() == [("math-pro", n_validation - first)]
    assert DEFAULT_ONBOARDING_FRACTION < 1 and first < n_validation
    assert sum(pipeline.server.request_log.totals().values()) - asked_before == first + n_test  # each once
    assert archived == answered  # its earlier answers are kept, not overwritten

    assert _requested(pipeline.ticks.until_idle()) == {("llm_error_features", "math-pro"), ("router", None)}
    features = pipeline.outcomes[("llm_error_features", "math-pro")]
    assert features.asset_materializations_for_node("llm_error_features")[0].metadata["profile"].value == (
        f"partial ({first} of {n_validation})"
    )
    _assert_drift_named(features)  # already on the partial profile: fewer prompts, wider noise, still beyond it

    # refinement: the nightly schedule asks the rest; the full profile's features and drift follow
    assert refine(defs, pipeline.instance, pipeline.resources, _succeeded) == 1
    assert sum(pipeline.server.request_log.totals().values()) - asked_before == n_validation + n_test  # each once
    assert _requested(pipeline.ticks.until_idle()) == {("llm_error_features", "math-pro"), ("router", None)}
    features = pipeline.outcomes[("llm_error_features", "math-pro")]
    assert features.asset_materializations_for_node("llm_error_features")[0].metadata["profile"].value == (
        f"full ({n_validation} of {n_validation})"
    )
    _assert_drift_named(features)
    with wh.connect() as con:
        assert wh.pending_counts(con).height == 0


def _succeeded(title: str, result: dg.ExecuteInProcessResult, seconds: float) -> None:
    assert result.success, title


def _assert_drift_named(features: dg.ExecuteInProcessResult) -> None:
    """math-pro's drift check after its re-profiling warns, naming the clusters that moved in its own terms."""
    [drift] = features.get_asset_check_evaluations()
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert len(drift.metadata["moved_clusters"].value) == 2  # math got worse, history better, biology the same
    # the check is the LLM's own (its partition) and says what moved in its terms
    assert drift.partition == "math-pro" and drift.description.startswith("math-pro: error moved beyond 3 standard")
    assert drift.description.count(" -> ") == 2


def test_a_worse_router_becomes_challenger_and_champion_stays(pipeline):
    import mlflow

    prices = {"cheap": 0.1, "math-pro": 1.0, "generalist": 4.0}
    pipeline.write_catalog({"cheap": "cheap", "math-pro": "math-pro", "generalist": "generalist"}, prices)
    pipeline.onboard(ALL_SPLITS)
    pipeline.train_cluster_map(n_clusters=3)  # one cluster per topic: routes math to math-pro
    pipeline.ticks.until_idle()
    v1 = pipeline.outcomes[("router", None)].asset_materializations_for_node("router")[0].metadata
    pipeline.train_cluster_map(n_clusters=1)  # one cluster: prompt-blind, like ZeroRouter
    assert _requested(pipeline.ticks.until_idle()) == {
        *(("llm_error_features", m) for m in ("cheap", "math-pro", "generalist")),
        ("router", None),
    }
    v2 = pipeline.outcomes[("router", None)].asset_materializations_for_node("router")[0].metadata
    assert v2["audc"].value < v1["audc"].value  # the precondition: v2 is worse on the same test prompts
    assert (v1["alias"].value, v2["alias"].value) == ("champion", "challenger")
    uri = pipeline.resources["mlflow"].tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("uniroute", "champion").version) == v1["version"].value
    assert str(client.get_model_version_by_alias("uniroute", "challenger").version) == v2["version"].value


def _names(value) -> list[str]:
    """LLM names from the router's metadata: a list, or text joined by commas ("none" when empty)."""
    names = value if isinstance(value, list) else str(value).split(",")
    return [n.strip() for n in names if n.strip() and n.strip() != "none"]


def test_profiling_another_llm_leaves_the_others_in_sync_and_a_repointed_one_unsynced(pipeline):
    def statuses() -> dict[str, str]:  # what the UI shows for each LLM's responses
        with daemon_workspace(pipeline.instance) as workspace:
            return ui_stale_statuses(workspace, "llm_responses", ["cheap", "math-pro", "generalist"])

    pipeline.write_catalog({"cheap": "cheap", "math-pro": "math-pro"})
    pipeline.onboard()
    pipeline.write_catalog({"cheap": "cheap", "math-pro": "math-pro", "generalist": "generalist"})
    assert [r.partition_key for r in pipeline.onboard()] == ["generalist"]  # its run syncs the catalog again
    fresh = dict.fromkeys(["cheap", "math-pro", "generalist"], "FRESH")
    assert statuses() == fresh

    # new prices change no answer; another model behind math-pro makes its answers Unsynced until it is profiled
    pipeline.write_catalog({"cheap": "cheap", "math-pro": "generalist", "generalist": "generalist"}, {"cheap": 2})
    assert dg.materialize([profiling.llm_catalog], instance=pipeline.instance, resources=pipeline.resources).success
    assert statuses() == {**fresh, "math-pro": "STALE"}
    assert [r.partition_key for r in pipeline.onboard()] == ["math-pro"]
    assert statuses() == fresh
