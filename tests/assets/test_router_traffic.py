"""Features from traffic through the real ``router`` asset and a real MLflow sqlite registry: with the flag off the
asset does what it always did; with it on and outcomes saying one LLM got worse on one cluster, a second version is
registered as ``features: validation+traffic`` with Psi moved there only; its gate also checks held-out outcomes
(kept as challenger when they say worse, promoted when neither they nor the test prompts do); the same outcomes
again register nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import polars as pl
import pytest

from assets.router import router
from router_core import split_traffic_outcomes
from tests.conftest import store_rated_traffic

DEGRADED, CLUSTER, K = "cheap", 0, 3  # the snapshot's map has K=3 clusters
FIRST = datetime.now(UTC).replace(microsecond=0)  # when the first traffic was routed and rated
LATER = FIRST + timedelta(hours=1)  # when it was rated again


def _heldout(prefix: str, n: int) -> tuple[list[str], set[str]]:
    """The ids of ``n`` requests, and those of them the router asset holds out (by request id)."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    _, heldout = split_traffic_outcomes(pl.DataFrame({"request_id": ids}))
    return ids, set(heldout["request_id"])


def _store(home, prefix: str, n: int, embedder_id: str, heldout_score: float, at: datetime = FIRST) -> None:
    """``n`` requests routed by v1 to DEGRADED on CLUSTER, rated (feedback) all wrong on the features side and
    ``heldout_score`` on the held-out side; plus requests of a router version with another map (K=2) and requests
    whose prompts another embedder embedded, judged (no feedback): those must be left out."""
    ids, held = _heldout(prefix, n)
    weights = [1.0 if k == CLUSTER else 0.0 for k in range(K)]
    route = {"chosen_llm": DEGRADED, "embedder_id": embedder_id, "router_version": "1", "cluster_weights": weights}
    decisions = [{**route, "request_id": i} for i in ids]
    other_map = {"router_version": "99", "cluster_weights": [0.5, 0.5]}
    others = [{**route, **other_map, "request_id": f"{i}-other"} for i in ids[:5]]
    embedders = [{**route, "embedder_id": "another-embedder", "request_id": f"{i}-embedder"} for i in ids[:3]]
    ratings = {i: heldout_score if i in held else 0.0 for i in ids}
    verdicts = {r["request_id"]: 0.0 for r in others} | {r["request_id"]: 1.0 for r in embedders}
    store_rated_traffic(home.warehouse, decisions + others + embedders, ratings, verdicts, at=at)


ALL = {"traffic_features": True, "traffic_blend": "all"}  # blend every cell (these runs pin the blend itself)


def _confirm(path, at: datetime) -> None:
    """A re-check of DEGRADED on CLUSTER (router version 1) that found it changed, recorded at ``at``."""
    import warehouse as wh

    row = {"llm": DEGRADED, "cluster": CLUSTER, "router_version": "1", "checked_at": at.replace(tzinfo=None)}
    row |= {"rated": 40, "traffic_z": 2.0, "asked": 4, "worse": 4, "better": 0, "stored_error": 0.75}
    row |= {"new_error": 1.0, "p_value": 0.0625, "z": 1.5, "changed": True, "cost_usd": 0.0, "message": "changed"}
    with wh.connect(path) as con:
        assert wh.record_rechecks(con, pl.DataFrame([row])) == 1


@pytest.fixture(scope="module")
def runs(pipeline_snapshot, tmp_path_factory):
    """The snapshot (v1 @champion) copied; the router on, then on with a bad held-out fraction, before any traffic;
    then traffic whose held-out side contradicts the features side, the router off, on, and on again (the same
    outcomes); then its held-out requests rated again (the newer rating, agreeing, stands) and new traffic that
    agrees, the router on. Outcomes are read from the copy's warehouse as the asset reads them.
    Each run's metadata (or failure message), the snapshot's router metadata, the registry."""
    import mlflow

    home = pipeline_snapshot.copy(tmp_path_factory.mktemp("traffic") / "data")
    version = mlflow.MlflowClient(home.tracking_uri, home.tracking_uri).get_model_version("uniroute", "1")
    embedder_id = version.tags["embedder_id"]
    results = {}
    with pytest.MonkeyPatch.context() as patch, home.instance() as instance:
        for key, value in home.env().items():
            patch.setenv(key, value)
        results["snapshot"] = home.latest_metadata(instance, "router")

        def run(name, **config):
            result = dg.materialize(
                [router],
                resources=home.resources(),
                instance=instance,
                run_config={"ops": {"router": {"config": config}}},
                raise_on_error=False,
            )
            if not result.success:
                results[name] = result.get_step_failure_events()[0].step_failure_data.error.message
                return
            metadata = result.asset_materializations_for_node("router")[0].metadata
            results[name] = {k: v.value for k, v in metadata.items()}

        run("empty", **ALL)
        run("bad", **ALL, traffic_heldout_fraction=1.5)
        _store(home, "a", 80, embedder_id, heldout_score=1.0)
        run("off")
        run("contradicted", **ALL)
        run("again", **ALL)
        _, held = _heldout("a", 80)
        store_rated_traffic(home.warehouse, ratings=dict.fromkeys(held, 0.0), at=LATER)
        _store(home, "b", 80, embedder_id, heldout_score=0.0)
        run("confirmed", **ALL)
        run("selective_unconfirmed", traffic_features=True)  # the default blend
        _confirm(home.warehouse, at=FIRST + timedelta(minutes=1))  # a re-check found DEGRADED changed after those
        _store(home, "c", 80, embedder_id, heldout_score=0.0, at=LATER)
        run("selective", traffic_features=True)
    return results | {"uri": home.tracking_uri}


@pytest.fixture
def client(runs):
    import mlflow

    from serving import registry

    registry.configure(runs["uri"])
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def _psi(version: str) -> tuple[list[str], np.ndarray]:
    import mlflow

    served = mlflow.pyfunc.load_model(f"models:/uniroute/{version}").unwrap_python_model().router
    return list(served.llms_), served.psi_


def test_with_the_flag_off_the_router_asset_does_what_it_did(runs):
    off, snapshot = runs["off"], runs["snapshot"]
    # the snapshot's run registered v1 (its gate names no champion); this one finds v1 again and runs no gate
    assert set(off) == set(snapshot) - {"gate_champion"} and not [k for k in off if k.startswith("traffic")]
    assert off["status"].startswith("unchanged: ") and "equal v1's (champion)" in off["status"]


def test_a_bad_traffic_setting_fails_in_one_line_naming_it(runs):
    assert "heldout_fraction" in runs["bad"] and "1.5" in runs["bad"] and "\n" not in runs["bad"].strip()


def test_without_outcomes_of_this_cluster_map_nothing_learns_from_traffic(runs):
    empty = runs["empty"]
    assert empty["traffic_status"].startswith("not built: no traffic outcomes") and "traffic_version" not in empty


def test_a_degraded_llm_yields_a_challenger_whose_psi_moved_there_only(runs, client):
    contradicted = runs["contradicted"]
    assert contradicted["status"].startswith("unchanged: ")  # the validation-only version is still v1
    assert (contradicted["traffic_version"], contradicted["traffic_status"]) == ("2", "registered v2 (challenger)")
    # the features side of 80 outcomes, by request id; v99's (another cluster map, K=2) and another embedder's left out
    assert contradicted["traffic_outcomes_used"] + contradicted["traffic_outcomes_heldout"] == 80
    assert contradicted["traffic_outcomes_other_map"] == 5 + 3
    version = client.get_model_version("uniroute", "2")
    assert (
        version.tags["features"] == "validation+traffic"
        and "features" not in client.get_model_version("uniroute", "1").tags
    )
    assert "- features: validation+traffic: each LLM's Psi blends its validation errors with" in version.description
    llms, psi = _psi("2")
    _, before = _psi("1")
    moved = ~np.isclose(psi, before)
    assert moved.sum() == 1 and moved[llms.index(DEGRADED), CLUSTER]
    assert psi[llms.index(DEGRADED), CLUSTER] > before[llms.index(DEGRADED), CLUSTER] + 0.1


def test_the_gate_keeps_it_as_challenger_when_heldout_traffic_says_worse(runs, client):
    contradicted = runs["contradicted"]
    gate = contradicted["traffic_gate"]
    assert contradicted["traffic_alias"] == "challenger" and "\n" not in gate
    assert gate.startswith("kept as challenger: on test prompts not worse (AUDC ")
    assert (
        f"on held-out traffic worse (challenger is worse on {contradicted['traffic_outcomes_heldout']} held-out" in gate
    )
    assert contradicted["traffic_gate_traffic_loss"] > contradicted["traffic_gate_champion_traffic_loss"]
    version = client.get_model_version("uniroute", "2")
    assert version.tags["gate"] == gate and f"**Champion gate**: {gate}" in version.description


def test_it_is_promoted_when_neither_test_prompts_nor_heldout_traffic_say_worse(runs, client):
    confirmed = runs["confirmed"]
    assert (confirmed["traffic_version"], confirmed["traffic_alias"]) == ("3", "champion")
    # the outcomes add up: the first 80 requests (their held-out ones by their newer rating) and 80 new ones
    assert confirmed["traffic_outcomes_used"] + confirmed["traffic_outcomes_heldout"] == 80 + 80
    assert confirmed["traffic_outcomes_other_map"] == 2 * (5 + 3)
    assert confirmed["traffic_gate"].startswith("promoted: on test prompts not worse (AUDC ")
    assert "; on held-out traffic not worse (challenger is not worse on " in confirmed["traffic_gate"]
    assert str(client.get_model_version_by_alias("uniroute", "champion").version) == "3"
    assert str(client.get_model_version_by_alias("uniroute", "previous-champion").version) == "1"


def test_the_selective_blend_moves_only_changed_cells_and_forgets_outcomes_from_before_a_confirmed_change(runs, client):
    """By default traffic moves only cells where a change is established (here 128 wrong answers against 4
    validation answers at 0.75); once a re-check confirms the change, the outcomes decided before it (the first 80
    requests of "a" and "b") no longer count: only the 80 of "c", decided after it."""
    _, champion = _psi("1")
    for name, outcomes in (("selective_unconfirmed", 80 + 80), ("selective", 80)):
        run = runs[name]
        assert run["traffic_outcomes_used"] + run["traffic_outcomes_heldout"] == outcomes
        llms, psi = _psi(run["traffic_version"])
        moved = ~np.isclose(psi, champion)
        assert moved.sum() == 1 and moved[llms.index(DEGRADED), CLUSTER]
    # the first: equal statistics to the "all" blend's v3 (its only cell with traffic changed), found unchanged
    assert runs["selective_unconfirmed"]["traffic_version"] == "3"
    version = client.get_model_version("uniroute", runs["selective"]["traffic_version"])
    assert "only in the cells where traffic or a re-check shows a change" in version.description


def test_the_same_outcomes_again_register_nothing(runs, client):
    again = runs["again"]
    assert (
        again["traffic_status"].startswith("unchanged: ")
        and "traffic outcomes equal v2's (challenger)" in (again["traffic_status"])
    )
    assert again["traffic_gate"].startswith("not run: unchanged")
    versions = sorted(str(v.version) for v in client.search_model_versions("name='uniroute'"))
    assert versions == ["1", "2", "3", "4"]  # "again" registered nothing; v4 is the selective blend's, at the end
