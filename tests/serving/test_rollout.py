"""Shadow and canary (serving.rollout) through the real gateway with the official ``openai`` SDK: a real MLflow
sqlite registry whose ``challenger`` alias the gateway follows, the replay endpoint as every LLM."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime

import mlflow
import openai
import polars as pl
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from profiling.rendering import render_mmlu_pro
from replay import ReplayServer
from router_core import Embedder
from router_core.embedding import prompt_hash
from serving.decisions import read_decisions
from serving.key_policy import ANONYMOUS_ID
from serving.rollout import CHALLENGER, canary_position

from .conftest import gateway_in_process, gateway_process, register_fixture_router, write_gateway_catalog

CANARY = 0.3
RELOAD_S = 0.5


@pytest.fixture(scope="module")
def versions(registry_uri, tmp_path_factory, mmlu_like_dir, onnx_cache) -> dict[str, str]:
    """Challengers registered beside v1 @champion (none of them under an alias yet): ``two`` and ``three`` share
    the champion's embedder; ``other`` embeds with another (a shorter max_seq_length: another embedder id)."""
    root = tmp_path_factory.mktemp("rollout_versions")
    other = Embedder(cache_dir=onnx_cache, max_seq_length=64)
    return {
        "two": register_fixture_router(root / "two", mmlu_like_dir, ["cheap", "generalist"], onnx_cache),
        "three": register_fixture_router(root / "three", mmlu_like_dir, ["cheap", "math-pro"], onnx_cache),
        "other": register_fixture_router(root / "other", mmlu_like_dir, ["cheap", "generalist"], onnx_cache, other),
    }


def _set_challenger(version: str | None) -> None:
    client = mlflow.MlflowClient()
    if version is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # already gone
            client.delete_registered_model_alias("uniroute", CHALLENGER)
    else:
        client.set_registered_model_alias("uniroute", CHALLENGER, version)


def _prompts(data_dir, n: int) -> list[str]:
    """``n`` fixture questions rendered as the LLMs are asked them (what the replay endpoint recognises)."""
    rows = pl.read_parquet(data_dir / "questions.parquet").head(n).iter_rows(named=True)
    return [render_mmlu_pro(r["question"], r["options"], r["category"]) for r in rows]


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def embedded(monkeypatch) -> list[int]:
    """Counts the prompts every Embedder of this process embeds from now on (one entry per call)."""
    calls: list[int] = []
    real = Embedder.embed

    def counting(self, texts):
        texts = list(texts)
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(Embedder, "embed", counting)
    return calls


@pytest.mark.parametrize("shadow", [True, False], ids=["shadow", "no-shadow"])
def test_the_challenger_ranks_every_routed_request_from_the_same_embedding(
    shadow, versions, registry_uri, mmlu_like_dir, prices, tmp_path, embedded
):
    _set_challenger(versions["two"])
    prompts = _prompts(mmlu_like_dir, 5)
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        with gateway_in_process(tmp_path, catalog, registry_uri, RELOAD_S, shadow=shadow) as (url, gateway):
            assert (gateway.rollout.challenger is not None) == shadow  # --no-shadow (no canary) loads none
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
            asked_before, embedded_before = sum(replay.request_log.totals().values()), sum(embedded)
            for prompt in prompts:
                raw = client.chat.completions.with_raw_response.create(
                    model="uniroute", messages=[{"role": "user", "content": prompt}], extra_body={"cost_weight": 0.0}
                )
                assert raw.headers["X-UniRoute-Router-Version"] == "1" and raw.parse().choices[0].message.content
            with client.chat.completions.create(
                model="uniroute", messages=[{"role": "user", "content": prompts[0]}], stream=True
            ) as stream:
                assert list(stream)
            client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": prompts[1]}])
            assert sum(embedded) - embedded_before == 6  # one embedding per routed request: none for the shadow
            assert sum(replay.request_log.totals().values()) - asked_before == 7  # one upstream call per request
            body = {"model": "uniroute", "messages": [{"role": "user", "content": prompts[0]}], "cost_weight": 0.0}
            explained = client.post("/route", cast_to=object, body=body)  # /v1/route names the shadow's choice too
            metrics = _samples(requests.get(f"{url}/metrics", timeout=10).text)
    assert explained["served_alias"] == "champion" and explained["router_version"] == "1"
    assert metrics[("uniroute_routed_total", (("alias", "champion"), ("version", "1")))] == 6  # not the explanation
    assert metrics[("uniroute_route_queries_total", (("alias", "champion"), ("version", "1")))] == 1
    shadowed = sum(v for (name, _), v in metrics.items() if name == "uniroute_shadow_total")
    assert shadowed == (6 if shadow else 0)

    records = read_decisions(tmp_path / "decisions")
    assert records.height == 7 and set(records["served_alias"]) == {"champion"}
    named = records.filter(pl.col("model_requested") == "cheap").row(0, named=True)
    assert named["shadow_version"] is None and named["shadow_llm"] is None
    routed = records.filter(pl.col("model_requested") == "uniroute", ~pl.col("stream"))
    if not shadow:
        assert routed["shadow_version"].is_null().all() and routed["shadow_llm"].is_null().all()
        assert explained["shadow"] is None
        return
    challenger = mlflow.pyfunc.load_model(f"models:/uniroute/{versions['two']}").unwrap_python_model()
    expected = challenger.route(prompts, {"cost_weight": 0.0})  # the challenger's own choice, embedding anew
    by_hash = {r["prompt_hash"]: r for r in routed.iter_rows(named=True)}
    for i, prompt in enumerate(prompts):
        record, llm = by_hash[prompt_hash(prompt)], expected["llm"][i]
        assert record["shadow_version"] == versions["two"] and record["shadow_llm"] == llm
        assert record["shadow_predicted_error"] == pytest.approx(expected["predicted_error"][i][llm], abs=1e-6)
        assert record["shadow_predicted_cost"] == pytest.approx(expected["cost"][i][llm])
    assert explained["shadow"]["version"] == versions["two"] and explained["shadow"]["llm"] == expected["llm"][0]


def test_a_challenger_with_another_embedder_is_not_shadowed(
    versions, registry_uri, mmlu_like_dir, prices, tmp_path, embedded, caplog
):
    _set_challenger(versions["other"])
    prompts = _prompts(mmlu_like_dir, 3)
    with ReplayServer(mmlu_like_dir) as replay, caplog.at_level(logging.WARNING, logger="serving.rollout"):
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        with gateway_in_process(tmp_path, catalog, registry_uri, RELOAD_S) as (url, gateway):
            assert gateway.rollout.challenger.version == versions["other"]
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
            before = sum(embedded)
            for prompt in prompts:
                client.chat.completions.create(model="uniroute", messages=[{"role": "user", "content": prompt}])
            assert sum(embedded) - before == 3  # never a second embedding with the challenger's embedder
            metrics = _samples(requests.get(f"{url}/metrics", timeout=10).text)
    assert metrics[("uniroute_shadow_total", (("outcome", "skipped_embedder"),))] == 3
    assert sum("embedders differ" in r.getMessage() for r in caplog.records) == 1  # said once, counted always
    assert read_decisions(tmp_path / "decisions")["shadow_version"].is_null().all()


@pytest.fixture(scope="module")
def canary_gateway(versions, registry_uri, tmp_path_factory, mmlu_like_dir, prices):
    """(URL, root) of ``uniroute serve --canary-fraction 0.3 --reload-interval 0.5`` (its own process)."""
    _set_challenger(None)
    root = tmp_path_factory.mktemp("canary")
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = root / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        args = ("--reload-interval", str(RELOAD_S), "--canary-fraction", str(CANARY))
        with gateway_process(root, catalog, registry_uri, *args) as url:
            yield url, root


def _served_version(client: openai.OpenAI, prompt: str, user: str | None) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="uniroute", messages=[{"role": "user", "content": prompt}], **({"user": user} if user else {})
    )
    return raw.headers["X-UniRoute-Router-Version"]


def _wait_for(client: openai.OpenAI, prompt: str, user: str, version: str) -> float:
    """Seconds until ``user``'s request is served by ``version`` (fails after 30 s)."""
    started = time.monotonic()
    while (served := _served_version(client, prompt, user)) != version:
        assert time.monotonic() - started < 30, f"still served by {served}, not {version}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_gateway_follows_the_challenger_appearing_moving_and_disappearing(canary_gateway, versions, mmlu_like_dir):
    url, _ = canary_gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    prompt = _prompts(mmlu_like_dir, 1)[0]
    user = next(f"user-{i}" for i in range(1000) if canary_position(ANONYMOUS_ID, f"user-{i}", prompt) < CANARY)
    _set_challenger(None)
    _wait_for(client, prompt, user, "1")
    for version in (versions["two"], versions["three"], None):
        _set_challenger(version)
        seconds = _wait_for(client, prompt, user, version or "1")
        # the reload interval, plus loading a version (a pyfunc and its router) on this shared machine
        assert seconds < RELOAD_S + 10, f"challenger {version}: picked up after {seconds:.1f} s"


def test_the_canary_share_is_served_by_the_challenger_one_user_one_version(canary_gateway, versions, mmlu_like_dir):
    url, root = canary_gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    prompts = _prompts(mmlu_like_dir, 3)
    users = [f"person-{i}" for i in range(60)]
    canary_users = {u for u in users if canary_position(ANONYMOUS_ID, u, "") < CANARY}
    assert 0.15 < len(canary_users) / len(users) < 0.45  # the hash spreads users (fixed names: deterministic)
    _set_challenger(versions["two"])
    _wait_for(client, prompts[0], sorted(canary_users)[0], versions["two"])

    since = datetime.now(UTC)  # this test's requests: the decision log holds the earlier test's too
    seen = {u: {_served_version(client, p, u) for p in prompts} for u in users}
    assert all(len(v) == 1 for v in seen.values()), seen  # one user never sees both versions
    assert {u for u, v in seen.items() if v == {versions["two"]}} == canary_users
    assert {v for u, (v,) in seen.items() if u not in canary_users} == {"1"}
    # without a user, the prompt decides: the same prompt, the same version
    assert len({_served_version(client, prompts[0], None) for _ in range(3)}) == 1

    deadline = time.monotonic() + 30  # the decision log writes every 2 s
    while (records := read_decisions(root / "decisions").filter(pl.col("at") >= since)).height < len(users) * 3 + 3:
        assert time.monotonic() < deadline, "the canary's decisions were not written"
        time.sleep(0.2)
    canary = records.filter(pl.col("served_alias") == "challenger")
    assert set(canary["router_version"]) == {versions["two"]} and set(canary["shadow_version"]) == {"1"}
    champion = records.filter(pl.col("served_alias") == "champion", pl.col("shadow_version").is_not_null())
    assert set(champion["router_version"]) == {"1"} and set(champion["shadow_version"]) == {versions["two"]}
    metrics = _samples(requests.get(f"{url}/metrics", timeout=10).text)
    served = metrics[("uniroute_routed_total", (("alias", "challenger"), ("version", versions["two"])))]
    assert served >= len(canary_users) * len(prompts)


@pytest.mark.parametrize("fraction", ["1.5", "nan", "-0.1"])
def test_serve_refuses_a_canary_fraction_outside_0_1_in_one_line(tmp_path, fraction):
    catalog = tmp_path / "llms.yaml"
    write_gateway_catalog(catalog, "http://127.0.0.1:9/v1", {"cheap": 0.1})
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--catalog", str(catalog), "--port", "9"]
    done = subprocess.run([*command, "--canary-fraction", fraction], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"uniroute serve: --canary-fraction {fraction}: expected a number in [0, 1]"


def test_the_canary_position_spreads_users_and_depends_on_the_key_and_the_user_alone():
    positions = [canary_position("k1", f"u{i}", "a prompt") for i in range(20_000)]
    assert abs(sum(p < 0.1 for p in positions) / len(positions) - 0.1) < 0.01
    assert all(0 <= p < 1 for p in positions)
    assert canary_position("k1", "u1", "a") == canary_position("k1", "u1", "b")  # the user decides, not the prompt
    assert canary_position("k1", None, "a") == canary_position("k1", "", "a") != canary_position("k1", None, "b")
    moved = sum(
        (canary_position("k1", f"u{i}", "") < 0.5) != (canary_position("k2", f"u{i}", "") < 0.5) for i in range(100)
    )
    assert 20 < moved < 80  # another key, another draw: a user id is not shared across tenants
