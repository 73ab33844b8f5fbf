"""`uniroute refresh` on a prompt set too small for the default K: the cluster map gets fewer clusters (said in the
run's log and metadata) instead of failing, and a champion is registered."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from pipelines.cli import main
from router_core import clusters_for

from . import test_refresh
from .test_refresh_held_out import HELD_BACK, _held_out_table

pytestmark = pytest.mark.e2e  # a whole pipeline, end to end

home = test_refresh.home  # the fixture: an empty data home


def test_twenty_prompts_get_fewer_clusters_and_a_champion(home, capsys):
    path = home / "small.parquet"
    _held_out_table(per_family=4).write_parquet(path)  # 5 task families x 4 prompts
    assert main(["import-results", str(path), "--dataset", "small", "--exclude-models", *HELD_BACK]) == 0
    assert main(["refresh"]) == 0
    captured = capsys.readouterr()
    assert "router uniroute v1 registered, alias champion" in captured.out, captured.out + captured.err
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("cluster_map"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        warnings = [e.user_message for e in instance.all_logs(event.run_id) if e.level == logging.WARNING]
    assert meta["n_clusters_asked"] == 16 and meta["n_clusters"] == clusters_for(meta["train_prompts"], 16) < 16
    said = f"{meta['train_prompts']} training prompts: K={meta['n_clusters']} clusters, not the 16 asked"
    assert any(said in message for message in warnings), warnings
