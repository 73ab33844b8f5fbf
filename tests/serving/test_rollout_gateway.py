"""Gateways follow an alias move under load: `uniroute rollback` while requests stream in (two worker processes,
16 in flight) fails no request, and every request sent after the reload interval + 1 s is served by the previous
version (benchmarks/rollout_rollback.py's measurement, on the fixture's router)."""

from __future__ import annotations

import polars as pl

from benchmarks.rollout_rollback import FOLLOW_SLACK_S, cli_rollback, rollback_under_load, wait_for_version
from profiling.rendering import render_mmlu_pro
from replay import ReplayServer
from serving import alias_moves, registry

from .conftest import gateway_process, write_gateway_catalog

RELOAD_S = 0.5


def _bodies(data_dir) -> list[dict]:
    questions = pl.read_parquet(data_dir / "questions.parquet")
    texts = [render_mmlu_pro(q, o, c) for q, o, c in questions.select("question", "options", "category").iter_rows()]
    return [{"model": "uniroute", "messages": [{"role": "user", "content": t}], "cost_weight": 0.0} for t in texts]


def test_a_rollback_under_load_fails_nothing_and_every_worker_follows_in_time(
    registry_uri, tmp_path, mmlu_like_dir, prices, register_router
):
    bodies = _bodies(mmlu_like_dir)
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        args = ["--workers", "2", "--reload-interval", str(RELOAD_S)]
        env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}  # the workers' metrics: not in data/
        with gateway_process(tmp_path, catalog, registry_uri, *args, env=env) as url:
            chat = f"{url}/v1/chat/completions"
            second = register_router(tmp_path, list(prices))
            registry.promote("uniroute", second, better=True, reason="test: the version to roll back from")
            wait_for_version(chat, bodies, second, timeout_s=120, concurrency=16)  # both workers moved to it
            run = rollback_under_load(
                chat, bodies, cli_rollback(registry_uri, "uniroute", "test: observed error up"), RELOAD_S, 16
            )
    assert run.previous == "1" and alias_moves.alias_version("uniroute", "champion") == "1"
    assert run.failed == 0, [a for a in run.answers if a.status != 200][:3]
    before = [a for a in run.answers if a.answered < run.started_at]  # answered before the rollback was asked for
    assert before and {a.version for a in before} == {second}  # the load saw the version rolled back from
    after = run.after_deadline()
    assert len(after) >= 16 and {a.version for a in after} == {"1"}, run.summary()  # a round in flight, at least
    assert run.followed_s() <= RELOAD_S + FOLLOW_SLACK_S and run.met()
    [move, *_] = alias_moves.read_moves("uniroute", "champion")
    assert (move.from_version, move.to_version, move.reason) == (second, "1", "test: observed error up")
