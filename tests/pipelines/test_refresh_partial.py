"""`uniroute refresh` with LLMs behind an endpoint: a new LLM is onboarded on half its validation prompts and the
line after the run names what it has still to answer; `uniroute refresh --complete` asks exactly that rest."""

from __future__ import annotations

import math

import polars as pl
import pytest

import warehouse as wh
from pipelines.cli import main
from replay import ReplayServer

from . import test_refresh

pytestmark = pytest.mark.e2e  # a whole pipeline, end to end

home = test_refresh.home  # the fixture: an empty data home
FIRST, LATER = test_refresh.FIRST, test_refresh.LATER


def _write_catalog(home, base_url: str, models: list[str]) -> None:
    entries = ", ".join(f"{{name: {m}, model_id: {m}, usd_per_mtok_in: 1, usd_per_mtok_out: 1}}" for m in models)
    (home / "llms.yaml").write_text(f"defaults: {{base_url: '{base_url}'}}\nllms: [{entries}]\n")


def _validation_answers(model: str) -> tuple[int, int]:
    """(validation prompts ``model`` has answered, validation prompts in the warehouse)."""
    with wh.connect() as con:
        prompts = wh.read_prompts(con).filter(pl.col("split") == "validation")["prompt_id"]
        answered = wh.read_responses(con).filter(pl.col("model") == model, pl.col("prompt_id").is_in(prompts))
    return answered["prompt_id"].n_unique(), prompts.len()


def test_a_new_llm_is_asked_half_then_refresh_complete_asks_the_rest_once(home, mmlu_like_dir, capsys):
    with ReplayServer(mmlu_like_dir) as server:
        _write_catalog(home, server.base_url, FIRST)
        assert main(["import-mmlu-pro", "--data", str(mmlu_like_dir)]) == 0
        # the first pool answers the training prompts too (the cluster map learns from them): the CLI collects them
        assert main(["sync-catalog", str(home / "llms.yaml")]) == 0
        assert main(["collect", "--splits", "train", "validation", "test", "--quiet"]) == 0
        assert main(["refresh"]) == 0
        out = capsys.readouterr().out
        assert "router uniroute v1 registered, alias champion" in out, out
        assert "still to answer" not in out  # no known LLM to plan from: the first pool was asked everything

        _write_catalog(home, server.base_url, [*FIRST, LATER])
        assert main(["refresh"]) == 0
        out = capsys.readouterr().out
        asked, total = _validation_answers(LATER)
        assert asked == math.ceil(0.5 * total) < total  # the default onboarding.fraction
        assert f"still to answer: {LATER} ({total - asked})" in out, out
        assert "router uniroute v2 registered" in out

        assert main(["refresh", "--complete"]) == 0
        out = capsys.readouterr().out
        assert f"nightly run: profile {LATER}" in out and "still to answer" not in out, out
        assert _validation_answers(LATER) == (total, total)
        asks = server.request_log.frame().filter(pl.col("model") == LATER, pl.col("outcome") == "ok")
        assert asks["count"].max() == 1  # nothing asked twice: the rest only
        assert "router uniroute v3 registered" in out

        assert main(["refresh", "--complete"]) == 0  # nothing left: nothing launched
        assert "up to date; nothing launched" in capsys.readouterr().out
