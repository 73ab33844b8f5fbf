"""The gateway as clients meet it: the official ``openai`` SDK (plain and streamed), client keys with their
models, spend and rate limits, and every refusal in OpenAI's error shape before anything is paid for."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import httpx
import openai
import polars as pl
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from profiling.rendering import render_mmlu_pro
from replay import ReplayServer
from router_core.servable import ServableRouter
from serving import registry_files
from serving.decisions import decision_files, read_decisions
from tests.serving.conftest import decision_of

from .conftest import gateway_process, write_gateway_catalog

SECRETS = {name: f"{name}-secret-0123456789abcdef" for name in ("alice", "bob", "carol", "dave")}


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture(scope="module")
def served(registry_uri, tmp_path_factory, mmlu_like_dir, prices):
    """(gateway URL, replay server, root): keys alice (anything), bob (a tiny daily budget), carol (cheap only,
    no routing over others), dave (2 requests a minute)."""
    root = tmp_path_factory.mktemp("gateway_clients")
    keys = root / "keys.yaml"
    keys.write_text(
        f"- {{id: alice, sha256: {_sha(SECRETS['alice'])}}}\n"
        f"- {{id: bob, sha256: {_sha(SECRETS['bob'])}, usd_per_day: 0.0000001}}\n"
        f"- {{id: carol, sha256: {_sha(SECRETS['carol'])}, models: [cheap]}}\n"
    )
    env = {"UNIROUTE_GATEWAY_KEYS": f"dave:{SECRETS['dave']}::2"}
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = root / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        with gateway_process(root, catalog, registry_uri, "--keys-file", str(keys), env=env) as url:
            yield url, replay, root


def _prompt(data_dir, category: str = "math") -> str:
    row = pl.read_parquet(data_dir / "questions.parquet").filter(pl.col("category") == category).row(0, named=True)
    return render_mmlu_pro(row["question"], row["options"], row["category"])


def _client(url: str, key: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=SECRETS.get(key, key), max_retries=0, timeout=30)


def _asked(replay) -> int:
    return sum(replay.request_log.totals().values())


def test_the_openai_sdk_routes_plain_and_streamed(served, mmlu_like_dir):
    url, _, _ = served
    client, prompt = _client(url), _prompt(mmlu_like_dir)
    messages = [{"role": "user", "content": prompt}]
    raw = client.chat.completions.with_raw_response.create(
        model="uniroute", messages=messages, extra_body={"cost_weight": 0.0}
    )
    answer = raw.parse()
    llm = raw.headers["X-UniRoute-LLM"]
    assert llm in {"math-pro", "generalist"} and answer.choices[0].message.content
    extra = answer.model_extra["uniroute"]
    assert extra["llm"] == llm and extra["router_version"] == "1" and extra["attempts"] == 1 and extra["cost_usd"] > 0

    with client.chat.completions.with_streaming_response.create(
        model="uniroute", messages=messages, stream=True, extra_body={"cost_weight": 0.0}
    ) as response:
        assert response.headers["X-UniRoute-LLM"] == llm
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content  # the same recorded answer, piece by piece

    direct = client.chat.completions.create(model="cheap", messages=messages)  # named: no routing
    assert direct.choices[0].message.content
    listed = [m.id for m in client.models.list()]
    assert listed[0] == "uniroute" and set(listed[1:]) == {"cheap", "math-pro", "generalist"}


def test_keys_are_required_and_checked(served, mmlu_like_dir):
    url, replay, _ = served
    messages = [{"role": "user", "content": _prompt(mmlu_like_dir)}]
    asked = _asked(replay)
    with pytest.raises(openai.AuthenticationError) as refused:
        _client(url, "nobody-0123456789abcdef").chat.completions.create(model="uniroute", messages=messages)
    assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
    assert requests.post(f"{url}/v1/chat/completions", json={}).status_code == 401  # no header at all

    carol = _client(url, "carol")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        carol.chat.completions.create(model="generalist", messages=messages)
    assert refused.value.body["param"] == "model" and "carol" in refused.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        carol.chat.completions.create(model="uniroute", messages=messages, extra_body={"candidates": ["generalist"]})
    assert refused.value.body["param"] == "candidates"
    assert _asked(replay) == asked  # nothing was paid for
    routed = carol.chat.completions.with_raw_response.create(
        model="uniroute", messages=messages, extra_body={"cost_weight": 0.0}
    )
    assert routed.headers["X-UniRoute-LLM"] == "cheap"  # routes among the LLMs the key may use only
    assert [m.id for m in carol.models.list()] == ["uniroute", "cheap"]


def test_a_spent_budget_and_a_rate_limit_get_429_with_retry_after(served, mmlu_like_dir):
    url, replay, _ = served
    messages = [{"role": "user", "content": _prompt(mmlu_like_dir)}]
    bob = _client(url, "bob")
    bob.chat.completions.create(model="cheap", messages=messages)  # within budget before it: spends it
    asked = _asked(replay)
    with pytest.raises(openai.RateLimitError) as refused:
        bob.chat.completions.create(model="cheap", messages=messages)
    assert refused.value.body["code"] == "insufficient_quota" and int(refused.value.response.headers["Retry-After"]) > 0
    assert refused.value.response.headers["x-should-retry"] == "false"  # spent until midnight: final

    dave = _client(url, "dave")
    for _ in range(2):
        dave.chat.completions.create(model="cheap", messages=messages)
    asked = _asked(replay)
    with pytest.raises(openai.RateLimitError) as refused:
        dave.chat.completions.create(model="cheap", messages=messages)
    assert refused.value.body["code"] == "rate_limit_exceeded" and refused.value.response.headers["Retry-After"]
    assert refused.value.response.headers["x-should-retry"] == "true"  # the next minute's requests may pass
    assert _asked(replay) == asked


def _counting_client(url: str, key: str, sent: list[str]) -> openai.OpenAI:
    """The SDK with its default retry policy (2 retries on 408, 409, 429, 5xx unless told otherwise); every
    request it sends is appended to ``sent``."""
    hooks = {"request": [lambda request: sent.append(request.url.path)]}
    return openai.OpenAI(
        base_url=f"{url}/v1", api_key=SECRETS[key], timeout=30, http_client=httpx.Client(event_hooks=hooks)
    )


def test_the_sdk_sends_a_final_refusal_once_and_the_access_log_names_the_llm_tried(served, mmlu_like_dir):
    url, replay, root = served
    sent: list[str] = []
    alice = _counting_client(url, "alice", sent)
    unknown = [{"role": "user", "content": "a prompt no LLM ever answered (the endpoint says 404)"}]
    asked = _asked(replay)
    with pytest.raises(openai.APIStatusError) as refused:  # the LLM refused the request itself: 502, final
        alice.chat.completions.create(model="cheap", messages=unknown)
    response = refused.value.response
    assert response.status_code == 502 and response.headers["x-should-retry"] == "false"
    assert sent == ["/v1/chat/completions"] and _asked(replay) == asked + 1  # once to the gateway, once upstream
    line = _access_line(root, response.headers["x-request-id"])
    assert "status=502" in line and "llm=- tried=cheap attempts=1" in line

    sent.clear()  # a spent budget (429, which the SDK retries unless told not to): once too
    with pytest.raises(openai.RateLimitError) as refused:
        _counting_client(url, "bob", sent).chat.completions.create(model="cheap", messages=unknown)
    assert refused.value.body["code"] == "insufficient_quota" and sent == ["/v1/chat/completions"]

    sent.clear()  # an answer: the access log names the LLM that answered and the one tried
    routed = alice.chat.completions.with_raw_response.create(
        model="uniroute", messages=[{"role": "user", "content": _prompt(mmlu_like_dir)}]
    )
    llm, line = routed.headers["X-UniRoute-LLM"], _access_line(root, routed.headers["x-request-id"])
    assert f"llm={llm} tried={llm} attempts=1" in line and sent == ["/v1/chat/completions"]


def _access_line(root, request_id: str, timeout_s: float = 10.0) -> str:
    """The gateway's access log line of a request: written just after its response, so waited for a little."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in (root / "gateway.log").read_text().splitlines() if request_id in line]
        if lines or time.monotonic() > deadline:
            assert lines, f"no access log line for {request_id}"
            return lines[0]
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"x" * 5_000_000, 413, "body"),  # 5 MB: refused from its Content-Length, nothing read
        (b'{"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "cost_weight": 1e999}', 400, None),
        (b'{"model": "math-pro", "messages": [{"role": "user", "content": "hi"}], "min_accuracy": 0.5}', 400, None),
        (b'{"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "tools": "all"}', 400, "tools"),
        (b'{"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10000000}', 400, None),
        (b'{"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "logprobs": 1}', 400, "logprobs"),
        (b'{"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "functions": []}', 400, "functions"),
    ],
)
def test_hostile_bodies_get_their_status_in_openai_shape(served, body, status, param):
    url, replay, _ = served
    asked = _asked(replay)
    headers = {"Authorization": f"Bearer {SECRETS['alice']}", "Content-Type": "application/json"}
    answer = requests.post(f"{url}/v1/chat/completions", data=body, headers=headers, timeout=30)
    error = answer.json()["error"]
    assert answer.status_code == status and set(error) == {"message", "type", "param", "code"}, answer.text
    assert param is None or error["param"] == param
    assert _asked(replay) == asked


def test_probes_metrics_and_the_access_log(served, mmlu_like_dir):
    url, _, root = served
    assert requests.get(f"{url}/health").json() == {"status": "ok"}
    ready = requests.get(f"{url}/ready").json()
    assert ready["status"] == "ready" and ready["router_version"] == "1"
    prompt = _prompt(mmlu_like_dir, "history")
    _client(url).chat.completions.create(model="uniroute", messages=[{"role": "user", "content": prompt}])
    samples = [s for f in text_string_to_metric_families(requests.get(f"{url}/metrics").text) for s in f.samples]
    names = {s.name for s in samples}
    assert {"uniroute_requests_total", "uniroute_routing_duration_seconds_bucket", "uniroute_choices_total"} <= names
    assert "uniroute_upstream_duration_seconds_bucket" in names and "uniroute_cost_usd_total" in names
    ok = sum(s.value for s in samples if s.name == "uniroute_requests_total" and s.labels["status"] == "200")
    refused = sum(s.value for s in samples if s.name == "uniroute_requests_total" and s.labels["status"] == "401")
    assert ok >= 1 and refused >= 1
    log = (root / "gateway.log").read_text()
    lines = [line for line in log.splitlines() if "path=/v1/chat/completions" in line]
    assert any("status=200" in line and "key_id=alice" in line and "llm=" in line for line in lines)
    assert prompt[:40] not in log and not any(secret in log for secret in SECRETS.values())


def test_the_decision_log_records_every_chat_request(served):
    _, _, root = served
    deadline = time.monotonic() + 10  # written off the request path within its flush interval (2 s)
    while time.monotonic() < deadline and read_decisions(root / "decisions").height == 0:
        time.sleep(0.2)
    frame = read_decisions(root / "decisions")
    routed = frame.filter(pl.col("model_requested") == "uniroute", pl.col("status") == 200)
    assert routed.height >= 3 and routed["predicted_error"].null_count() == 0
    assert routed["prompt_hash"].null_count() == 0 and routed["realised_cost_usd"].min() > 0
    assert set(frame["key_id"]) <= {"alice", "bob", "carol", "dave"}


def test_a_routed_decision_keeps_what_learning_needs_and_no_text(served, mmlu_like_dir, registry_uri):
    url, _, root = served
    client, prompt = _client(url), _prompt(mmlu_like_dir, "history")
    raw = client.chat.completions.with_raw_response.create(
        model="uniroute", messages=[{"role": "user", "content": prompt}], extra_body={"cost_weight": 0.0}
    )
    record = decision_of(root, raw.headers["x-request-id"])
    # what `uniroute route` loads: the champion's files, straight from the sqlite registry
    router = ServableRouter().load_dir(
        registry_files.router_dir(registry_files.sqlite_path(registry_uri), "models:/uniroute@champion")
    )
    params = {"candidates": [row["llm"] for row in router.pool()], "cost_weight": 0.0}
    expected = router.rank(prompt, router.embedder.embed([prompt])[0], params)
    assert record["ranked_llms"] == expected["order"] and record["chosen_llm"] == expected["order"][0]
    assert record["ranked_predicted_error"] == pytest.approx(
        [expected["predicted_error"][m] for m in expected["order"]], abs=1e-5
    )
    assert record["ranked_predicted_cost"] == [expected["cost"][m] for m in expected["order"]]
    weights = record["cluster_weights"]
    assert len(weights) == router.router.cluster_map.n_clusters == 3 and sum(weights) == pytest.approx(1.0)
    assert weights == pytest.approx(expected["cluster_weights"], abs=1e-5)
    assert record["embedder_id"] == router.embedder.embedder_id and record["router_version"] == "1"
    named = client.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": prompt}]
    )
    passed = decision_of(root, named.headers["x-request-id"])
    learned = ("embedder_id", "cluster_weights", "ranked_llms", "ranked_predicted_error", "ranked_predicted_cost")
    assert all(passed[c] is None for c in learned) and passed["chosen_llm"] == "cheap"
    stored = b"".join(f.read_bytes() for f in decision_files(root / "decisions"))
    assert prompt[:40].encode() not in stored and not any(s.encode() in stored for s in SECRETS.values())


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--host", "0.0.0.0"], 2, "no client keys"),
        (["--host", "127.0.0.1", "--keys-file", "missing.yaml"], 2, "missing.yaml"),
        (["--traffic-sample-rate", "1.5"], 2, "--traffic-sample-rate 1.5: expected a number in [0, 1]"),
        (["--traffic-sample-rate", "nan"], 2, "--traffic-sample-rate nan: expected a number in [0, 1]"),
    ],
)
def test_serve_refuses_an_open_address_without_keys(tmp_path, args, code, says):
    catalog = tmp_path / "llms.yaml"
    write_gateway_catalog(catalog, "http://127.0.0.1:9/v1", {"cheap": 0.1})
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--catalog", str(catalog), "--port", "9", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == code and says in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
