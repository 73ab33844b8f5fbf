"""An onboarding budget against a real replay server and DuckDB file: the collector stops before passing it, as the
server's request log shows, and ``uniroute collect --dry-run`` prints the estimate and asks nothing."""

from __future__ import annotations

import polars as pl
import pytest

import warehouse as wh
from pipelines.cli import main
from profiling.collector import RetryPolicy
from profiling.onboarding import estimate_onboarding
from profiling.staging import collect
from replay import ReplayServer

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, timeout_s=5.0)


def _catalog(base_url: str) -> pl.DataFrame:
    # prompts cost most: an answer's worst case (512 completion tokens without max_tokens) stays near its cost
    return pl.DataFrame(
        {
            "name": ["cheap"],
            "base_url": base_url,
            "model_id": "cheap",
            "api_key_env": None,
            "usd_per_mtok_in": 10.0,
            "usd_per_mtok_out": 0.1,
            "max_concurrency": 4,
            "active": True,
        },
        schema_overrides={"api_key_env": pl.String},
    )


def _served_cost(server: ReplayServer, con) -> tuple[int, float]:
    """Requests the server answered, and what they cost by the warehouse's record of each answer."""
    served = server.request_log.frame().filter(pl.col("outcome") == "ok")
    stored = wh.read_responses(con, ["cheap"]).select("prompt_id", "cost_usd")
    joined = served.join(stored, on="prompt_id", how="left")
    assert joined["cost_usd"].null_count() == 0  # every answer served was stored, and priced
    return int(served["count"].sum()), float((joined["cost_usd"] * joined["count"]).sum())


def test_a_budget_stops_collection_before_it_is_exceeded(con, mmlu_like_dir, caplog):
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        unlimited = estimate_onboarding(con, _catalog(server.base_url).row(0, named=True), ["validation"])
        budget = unlimited.usd / 2
        report = collect(con, ["cheap"], policy=FAST, progress=False, budget_usd=budget)
        asked, spent = _served_cost(server, con)
        again = collect(con, ["cheap"], policy=FAST, progress=False, budget_usd=budget)  # the budget is spent
        asked_again, _ = _served_cost(server, con)
    n_validation = unlimited.prompts
    assert 0 < asked < n_validation and spent <= budget
    assert spent > budget / 2  # it stopped at the budget, not long before it
    assert report.stored == asked and report.failed == 0 and report.not_asked["cheap"] == n_validation - asked
    [message] = report.budget_messages
    assert message.startswith("llm='cheap': onboarding budget reached") and "\n" not in message
    assert f"{n_validation - asked} prompts not asked" in message
    assert asked_again == asked and again.not_asked["cheap"] == n_validation - asked
    # the profile it has is a partial one, held to what it answered
    profile = wh.read_profiles(con, ["cheap"]).row(0, named=True)
    assert (profile["answered"], profile["target"], profile["partial"]) == (asked, asked, True)
    assert profile["onboarding_usd"] == pytest.approx(spent)


def test_without_a_budget_everything_is_asked_and_the_profile_is_full(con, mmlu_like_dir):
    with ReplayServer(mmlu_like_dir) as server:
        wh.upsert_llms(con, _catalog(server.base_url))
        report = collect(con, ["cheap"], policy=FAST, progress=False)
        asked, _ = _served_cost(server, con)
    profile = wh.read_profiles(con, ["cheap"]).row(0, named=True)
    assert asked == report.requested == profile["answered"] == profile["total"] and not profile["partial"]
    assert not report.not_asked and not report.budget_messages


def test_collect_dry_run_prints_the_estimate_and_asks_nothing(tmp_path, mmlu_like_dir, monkeypatch, capsys):
    from profiling.importers import import_mmlu_pro

    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with ReplayServer(mmlu_like_dir) as server:
        with wh.connect(path) as con:
            import_mmlu_pro(con, mmlu_like_dir, seed=0)
            wh.upsert_llms(con, _catalog(server.base_url))
            expected = estimate_onboarding(con, _catalog(server.base_url).row(0, named=True), ["validation"])
        assert main(["collect", "--dry-run", "--budget-usd", "0.5"]) == 0
        served = server.request_log.frame()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"estimate {expected.line()}"
    assert f"{expected.prompts} prompts (" in out[0] and f"${expected.usd:.4f}" in out[0]
    assert out[-1].startswith(f"dry run: {expected.prompts} prompts") and "budget $0.5000 per LLM" in out[-1]
    assert served.height == 0  # nothing was asked
    with wh.connect(path) as con:
        assert wh.read_responses(con).height == 0 and wh.read_profiles(con)["partial"].sum() == 0


@pytest.mark.parametrize(("option", "value"), [("--fraction", "0"), ("--fraction", "1.5"), ("--budget-usd", "-1")])
def test_a_bad_onboarding_option_is_one_line_naming_it(tmp_path, monkeypatch, capsys, option, value):
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    assert main(["collect", "--dry-run", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"uniroute collect: {option}={float(value)!r}: must be") and len(err.splitlines()) == 1
