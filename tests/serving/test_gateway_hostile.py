"""A real gateway under hostile clients and upstreams, many requests at once: poisoned prompts fail alone, an
upstream's endless Retry-After and redirects stay bounded, a revoked key is refused within the reload interval,
and /metrics is for operators only."""

from __future__ import annotations

import hashlib
import json
import time

import polars as pl
import pytest
import requests

from profiling.rendering import render_mmlu_pro
from replay import ReplayServer

from .conftest import gateway_process, post_at_once, write_gateway_catalog
from .hostile_upstream import HostileUpstream

SECRETS = {name: f"{name}-secret-0123456789abcdef" for name in ("alice", "bob", "ops")}
RELOAD_S = 0.5


def _keys(names: list[str]) -> str:
    role = {"ops": ", role: admin"}
    return "".join(
        f"- {{id: {n}, sha256: {hashlib.sha256(SECRETS[n].encode()).hexdigest()}{role.get(n, '')}}}\n" for n in names
    )


@pytest.fixture(scope="module")
def hostile(registry_uri, tmp_path_factory, mmlu_like_dir, prices):
    """(URL, root, keys file, generalist's upstream, math-pro's upstream, the other origin): cheap answers from the
    replay endpoint; generalist and math-pro from upstreams that misbehave on demand."""
    root = tmp_path_factory.mktemp("gateway_hostile")
    keys = root / "keys.yaml"
    keys.write_text(_keys(["alice", "bob", "ops"]))
    with (
        ReplayServer(mmlu_like_dir) as replay,
        HostileUpstream() as generalist,
        HostileUpstream() as math_pro,
        HostileUpstream() as other,
    ):
        catalog = root / "llms.yaml"
        extra = {"generalist": f"base_url: '{generalist.base_url}'", "math-pro": f"base_url: '{math_pro.base_url}'"}
        write_gateway_catalog(catalog, replay.base_url, prices, extra)
        args = ["--keys-file", str(keys), "--reload-interval", str(RELOAD_S), "--retries", "0"]
        with gateway_process(root, catalog, registry_uri, *args) as url:
            yield url, root, keys, generalist, math_pro, other


def _prompts(data_dir, n: int) -> list[str]:
    questions = pl.read_parquet(data_dir / "questions.parquet").head(n)
    return [render_mmlu_pro(q, o, c) for q, o, c in questions.select("question", "options", "category").iter_rows()]


def _post(url: str, bodies: list[dict], key: str = "alice") -> list[tuple[int, dict, str]]:
    """(status, headers, text) per body, all in flight at once."""
    return post_at_once(url, SECRETS.get(key, key), bodies)


def _chat(url: str, key: str, prompt: str) -> requests.Response:
    body = {"model": "cheap", "messages": [{"role": "user", "content": prompt}]}
    headers = {"Authorization": f"Bearer {SECRETS.get(key, key)}"}
    return requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_poisoned_prompts_fail_alone_and_no_honest_request_fails(hostile, mmlu_like_dir):
    url, *_ = hostile
    prompts = _prompts(mmlu_like_dir, 40)
    poisoned = set(range(3, 40, 8))  # 5 of 40, spread through the batches
    bodies = [
        {"model": "uniroute", "messages": [{"role": "user", "content": p + ("\ud800" if i in poisoned else "")}]}
        for i, p in enumerate(prompts)
    ]
    for _ in range(2):  # two rounds: the embedding batches form differently each time
        answers = _post(url, bodies)
        honest = [status for i, (status, _, _) in enumerate(answers) if i not in poisoned]
        assert honest == [200] * 35, [text for status, _, text in answers if status != 200][:2]
        for i in poisoned:
            status, _, text = answers[i]
            error = json.loads(text)["error"]
            assert status == 400 and (error["param"], error["code"]) == ("messages[0].content", "invalid_encoding")


def test_an_upstreams_endless_retry_after_and_its_open_breaker_give_bounded_retry_after(hostile):
    url, _, _, generalist, _, _ = hostile
    generalist.mode = "retry_after:inf"
    body = {"model": "generalist", "messages": [{"role": "user", "content": "hi"}]}
    answers = _post(url, [body] * 8)
    assert {status for status, _, _ in answers} <= {429, 503}, answers[0]
    assert any(status == 429 and h["Retry-After"] == "60" for status, h, _ in answers)  # inf: capped, not a 500
    generalist.mode = "retry_after:1e300"
    time.sleep(0.1)
    status, headers, _ = _post(url, [body])[0]
    assert status == 503 and 1 <= int(headers["Retry-After"]) <= 30  # the breaker opened: its cooldown's rest
    generalist.mode = "ok"


def test_an_upstream_redirect_is_a_502_and_the_prompt_never_reaches_the_other_origin(hostile):
    url, _, _, _, math_pro, other = hostile
    math_pro.mode = f"redirect:307:{other.base_url}"
    body = {"model": "math-pro", "messages": [{"role": "user", "content": "a confidential prompt"}]}
    answers = _post(url, [body] * 8)
    math_pro.mode = "ok"
    assert {status for status, _, _ in answers} == {502}
    assert other.requests == [] and len(math_pro.requests) >= 8


def test_a_revoked_key_is_refused_within_the_reload_interval_and_a_bad_file_keeps_the_keys(hostile, mmlu_like_dir):
    url, root, keys, *_ = hostile
    prompt = _prompts(mmlu_like_dir, 1)[0]
    assert _chat(url, "bob", prompt).status_code == 200
    keys.write_text(_keys(["alice", "ops"]))
    revoked = time.monotonic()
    while _chat(url, "bob", prompt).status_code == 200:
        assert time.monotonic() - revoked < 5 * RELOAD_S + 2, "bob still served"
        time.sleep(0.05)
    assert _chat(url, "bob", prompt).status_code == 401 and _chat(url, "alice", prompt).status_code == 200
    keys.write_text("- {id: [unclosed\n")
    time.sleep(4 * RELOAD_S)
    body = {"model": "cheap", "messages": [{"role": "user", "content": prompt}]}
    statuses = [status for status, _, _ in _post(url, [body] * 8)]
    assert statuses == [200] * 8  # the keys in use stay
    log = (root / "gateway.log").read_text()
    assert log.count("invalid, keeping the 2 keys in use") == 1
    keys.write_text(_keys(["alice", "bob", "ops"]))


def test_metrics_are_for_the_admin_key_only(hostile, mmlu_like_dir):
    url, *_ = hostile
    assert _chat(url, "alice", _prompts(mmlu_like_dir, 1)[0]).status_code == 200  # something to count
    page = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {SECRETS['ops']}"}, timeout=10)
    assert page.status_code == 200 and 'key_id="alice"' in page.text
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {SECRETS['alice']}"}, 403)):
        refused = requests.get(f"{url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == status and "alice" not in refused.text.replace("key 'alice'", "")
        assert "key_id" not in refused.text and set(refused.json()["error"]) == {"message", "type", "param", "code"}
