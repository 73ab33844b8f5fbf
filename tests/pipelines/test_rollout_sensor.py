"""The rollout sensor's rules on real ticks (build_sensor_context, an ephemeral Dagster instance) against a real MLflow
sqlite registry and a real DuckDB warehouse: promote a challenger not worse with confidence, roll back on a guardrail
breach, move nothing on too few requests; every move recorded with its reason; and the rollout_report asset."""

from __future__ import annotations

import time

import dagster as dg
import polars as pl
import pytest

import warehouse as wh
from assets.resources import MlflowResource, RolloutResource, WarehouseResource
from assets.rollout import rollout_report
from pipelines.sensors import ROLLOUT_SENSOR, rollout_sensor
from serving import alias_moves, registry
from tests.rollout_traffic import feedback, outcomes, traffic

SENSOR = f"sensor:{ROLLOUT_SENSOR}"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """(resources, versions): a sqlite registry holding uniroute v1, v2, v3 (each with its run, no alias) and an
    empty warehouse, both under ``tmp_path``."""
    import mlflow

    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry.configure(uri)
    client = mlflow.MlflowClient()
    experiment = registry.ensure_experiment("uniroute", tmp_path / "artifacts")
    client.create_registered_model("uniroute")
    versions = []
    for _ in range(3):
        run = client.create_run(experiment)
        version = client.create_model_version("uniroute", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        versions.append(str(version.version))
    with wh.connect(tmp_path / "w.duckdb"):
        pass
    resources = {
        "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "mlflow": MlflowResource(tracking_uri=uri),
        "rollout": RolloutResource(min_requests=200),
    }
    yield resources, versions
    mlflow.set_tracking_uri(None)


def _store(resources, decisions: pl.DataFrame, rated: pl.DataFrame | None = None) -> None:
    with resources["warehouse"].connect() as con:
        wh.insert_routing_decisions(con, decisions)
        if rated is not None:
            wh.insert_traffic_feedback(con, feedback(rated))


def _tick(resources, **rules):
    if rules:
        resources = {**resources, "rollout": RolloutResource(**rules)}
    with dg.DagsterInstance.ephemeral() as instance:
        return rollout_sensor(dg.build_sensor_context(instance=instance, resources=resources))


def _aliases() -> dict[str, str]:
    import mlflow

    return {a: str(v) for a, v in mlflow.MlflowClient().get_registered_model("uniroute").aliases.items()}


def test_a_challenger_not_worse_with_confidence_is_promoted(home):
    resources, (v1, v2, _) = home
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v2, better=False)
    _store(resources, traffic(300, version=v1, shadow=v2, error=0.30, shadow_error=0.25))
    result = _tick(resources)
    assert isinstance(result, dg.SensorResult), result
    assert _aliases() == {"champion": v2, "previous-champion": v1}
    [observation] = result.asset_events
    assert observation.asset_key == rollout_report.key and observation.metadata["action"].value == "promote"
    reason = observation.metadata["reason"].value
    assert reason.startswith("not worse: challenger v2 vs champion v1 over 300 shadowed requests")
    [move] = alias_moves.read_moves("uniroute", "champion")[:1]
    assert (move.from_version, move.to_version, move.moved_by, move.reason) == (v1, v2, SENSOR, reason)
    assert isinstance(_tick(resources), dg.SkipReason)  # no challenger left; the new champion has no traffic yet


def test_a_worse_challenger_stays_challenger(home):
    resources, (v1, v2, _) = home
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v2, better=False)
    _store(resources, traffic(300, version=v1, shadow=v2, error=0.30, shadow_error=0.40))
    result = _tick(resources)
    assert isinstance(result, dg.SkipReason) and "not shown not worse" in result.skip_message
    assert _aliases() == {"champion": v1, "challenger": v2}


def test_no_move_on_too_few_requests(home):
    resources, (v1, v2, v3) = home
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v2, better=True)  # v2 champion, v1 previous
    registry.promote("uniroute", v3, better=False)  # v3 challenges
    clearly_better = traffic(150, version=v2, shadow=v3, error=0.40, shadow_error=0.10, failed=0.5)
    _store(resources, clearly_better)  # and half of the champion's requests failed: still too few to say
    result = _tick(resources)
    assert isinstance(result, dg.SkipReason) and "too few requests: 150 shadowed" in result.skip_message
    assert _aliases() == {"champion": v2, "previous-champion": v1, "challenger": v3}
    moved = len(alias_moves.read_moves("uniroute"))
    _store(resources, traffic(60, version=v2, shadow=v3, error=0.40, shadow_error=0.10, prefix="more"))
    assert isinstance(_tick(resources), dg.SensorResult)  # 210 now: enough to judge; a breach goes first
    assert _aliases() == {"champion": v1, "challenger": v3} and len(alias_moves.read_moves("uniroute")) > moved


@pytest.mark.parametrize(
    ("failed", "error", "says"), [(0.2, None, "upstream error rate"), (0.0, 0.8, "observed error")]
)
def test_a_guardrail_breach_rolls_the_champion_back(home, failed, error, says):
    resources, (v1, v2, _) = home
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v2, better=True)
    served = traffic(300, version=v2, shadow=None, failed=failed)
    _store(resources, served, outcomes(served, error) if error is not None else None)
    result = _tick(resources)
    assert isinstance(result, dg.SensorResult), result
    assert _aliases() == {"champion": v1}  # previous-champion is spent: no second rollback to a bad version
    reason = result.asset_events[0].metadata["reason"].value
    assert says in reason and reason.endswith(f"roll back to v{v1}")
    [back, spent] = alias_moves.read_moves("uniroute")[:2][::-1]
    assert (back.alias, back.from_version, back.to_version, back.moved_by, back.reason) == (
        "champion", v2, v1, SENSOR, reason
    )  # fmt: skip
    assert (spent.alias, spent.to_version) == ("previous-champion", None)


def test_only_traffic_since_the_champion_moved_counts_and_a_disabled_sensor_moves_nothing(home):
    resources, (v1, v2, _) = home
    registry.promote("uniroute", v1, better=True)
    _store(resources, traffic(300, version=v2, shadow=None, failed=0.5, served_alias="challenger"))  # as a canary
    time.sleep(0.01)
    registry.promote("uniroute", v2, better=True)
    result = _tick(resources)
    assert isinstance(result, dg.SkipReason) and _aliases() == {"champion": v2, "previous-champion": v1}
    _store(resources, traffic(300, version=v2, shadow=None, failed=0.5, prefix="after"))
    disabled = _tick(resources, enabled=False)
    assert isinstance(disabled, dg.SkipReason) and disabled.skip_message.startswith("rollback (disabled): ")
    assert _aliases() == {"champion": v2, "previous-champion": v1}


def test_the_rollout_report_compares_both_versions_and_logs_its_figure(home):
    import mlflow

    resources, (v1, v2, _) = home
    registry.promote("uniroute", v1, better=True)
    registry.promote("uniroute", v2, better=False)
    shadowed = traffic(300, version=v1, shadow=v2)
    canary = traffic(60, version=v2, shadow=v1, served_alias="challenger", prefix="canary")
    _store(resources, pl.concat([shadowed, canary]), outcomes(pl.concat([shadowed, canary]), 0.3))
    result = dg.materialize([rollout_report], resources=resources)
    metadata = result.asset_materializations_for_node("rollout_report")[0].metadata
    assert metadata["champion"].value == v1 and metadata["challenger"].value == v2
    assert metadata["decisions"].value == 360 and metadata["verdict"].value in {"promote", "hold"}
    table = metadata["comparison"].value
    assert "| agreement | both |" in table and "| observed_error | challenger | 2 | 60 |" in table
    assert metadata["rollout"].value.startswith("![rollout.png](data:image/png;base64,")
    client = mlflow.MlflowClient()
    run_id = client.get_model_version("uniroute", v2).run_id
    assert metadata["mlflow_run_id"].value == run_id
    assert [a.path for a in client.list_artifacts(run_id, "rollout")] == ["rollout/rollout.png"]
    assert _aliases() == {"champion": v1, "challenger": v2}  # the report moves nothing


def test_bad_rules_are_a_skip_naming_the_field(home):
    resources, (v1, *_) = home
    registry.promote("uniroute", v1, better=True)
    result = _tick(resources, confidence=1.5)
    assert isinstance(result, dg.SkipReason) and "confidence" in result.skip_message
