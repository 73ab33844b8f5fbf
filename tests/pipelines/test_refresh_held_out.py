"""`uniroute refresh` on a held-out-style evaluation table: two LLMs held back, one cheaper than all, onboarded into
the champion with the same map; a table without costs refused naming its LLMs, then priced by a file. (Beside
test_refresh.py, so that the two halves run side by side on the test workers.)"""

from __future__ import annotations

import hashlib

import dagster as dg
import polars as pl
import pytest

from pipelines.cli import main

from . import test_refresh

pytestmark = pytest.mark.e2e  # a whole pipeline, end to end

home = test_refresh.home  # the fixture: an empty data home


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
