"""``POST /v1/route`` through the real gateway (its own process, a replay endpoint behind it, the official ``openai``
SDK): the ranking is what the same chat request is then routed to (the replay's request log says which LLM was
asked), nothing is forwarded or charged, the terms add up, and a client key's own budget and candidates bound what
its requests ask."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import httpx
import openai
import pytest

from replay import ReplayServer
from router_core import budget_mix
from router_core.servable import ServableRouter
from serving import registry_files
from serving.keys import KeyPolicy, KeyStore
from serving.ledger import SqliteLedger
from tests.serving.conftest import decision_of

from .conftest import gateway_process, write_gateway_catalog

SECRETS = {name: f"{name}-secret-0123456789abcdef" for name in ("alice", "tenant", "slow")}
TENANT_MAX_COST = 0.25  # USD per query, among its candidates
TENANT_CANDIDATES = ["cheap", "math-pro"]


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture(scope="module")
def served(registry_uri, tmp_path_factory, mmlu_like_dir, prices):
    """(gateway URL, replay server, root): keys alice (no policy), tenant (its own budget and candidates, a daily spend
    limit), slow (2 requests a minute)."""
    root = tmp_path_factory.mktemp("gateway_route")
    keys = root / "keys.yaml"
    keys.write_text(
        f"- {{id: alice, sha256: {_sha(SECRETS['alice'])}}}\n"
        f"- {{id: tenant, sha256: {_sha(SECRETS['tenant'])}, usd_per_day: 5, "
        f"max_cost_per_query: {TENANT_MAX_COST}, candidates: [{', '.join(TENANT_CANDIDATES)}]}}\n"
        f"- {{id: slow, sha256: {_sha(SECRETS['slow'])}, requests_per_minute: 2}}\n"
    )
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = root / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        with gateway_process(root, catalog, registry_uri, "--keys-file", str(keys)) as url:
            yield url, replay, root


def _client(url: str, key: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=SECRETS[key], max_retries=0, timeout=30)


def _route(url: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/route", json=body, headers={"Authorization": f"Bearer {SECRETS[key]}"}, timeout=30)


def _asked(replay) -> Counter:
    """Requests the replay endpoint got, per LLM."""
    counts: Counter = Counter()
    for row in replay.request_log.rows():
        counts[row["model"]] += row["count"]
    return counts


def _body(prompt: str, **routing) -> dict:
    return {"model": "uniroute", "messages": [{"role": "user", "content": prompt}], **routing}


def _chat(client: openai.OpenAI, prompt: str, **routing):
    """A routed chat request with the SDK (UniRoute's fields ride in ``extra_body``), its raw response."""
    body = _body(prompt)
    return client.chat.completions.with_raw_response.create(**body, extra_body=routing)


@pytest.mark.parametrize(
    ("key", "routing"),
    [
        ("alice", {}),
        ("alice", {"cost_weight": 0.0}),
        ("alice", {"max_cost_per_query": 1.5}),
        ("alice", {"min_accuracy": 0.6, "candidates": ["cheap", "generalist"]}),
        ("tenant", {}),
        ("tenant", {"max_cost_per_query": 3.0}),  # more than the key allows: bounded by the key
    ],
)
def test_route_ranks_what_the_chat_request_is_then_routed_to(served, prompts, key, routing):
    url, replay, _ = served
    client = _client(url, key)
    for question_id in list(prompts)[:: len(prompts) // 5]:  # five, across the fixture's topics
        before = _asked(replay)
        explained = client.post("/route", cast_to=object, body=_body(prompts[question_id], **routing))  # JSON back
        assert _asked(replay) == before  # /v1/route forwards nothing
        answer = _chat(client, prompts[question_id], **routing)
        asked = _asked(replay) - before
        assert asked == Counter({explained["chosen_llm"]: 1}), (explained, asked)  # the replay's log: that LLM
        assert answer.headers["X-UniRoute-LLM"] == explained["chosen_llm"]
        extra = answer.parse().model_extra["uniroute"]
        assert extra["runner_up"] == explained["ranked"][1]["llm"]
        assert extra["bounded_by"] == explained["bounded_by"] and extra["cost_weight"] == explained["cost_weight"]
        assert answer.headers["X-UniRoute-Runner-Up"] == extra["runner_up"]


def test_the_route_body_follows_the_contract_and_its_terms_add_up(served, prompts):
    url, _, _ = served
    response = _route(url, "alice", _body(prompts[3], cost_weight=0.05))
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {
        "object",
        "router_version",
        "served_alias",
        "embedder_id",
        "chosen_llm",
        "cost_weight",
        "bounded_by",
        "cluster_weights",
        "ranked",
        "shadow",
    }
    assert body["object"] == "uniroute.route" and body["router_version"] == "1" and body["served_alias"] == "champion"
    assert body["shadow"] is None and body["embedder_id"] and body["cost_weight"] == 0.05
    assert body["bounded_by"] == {"kind": "cost_weight", "value": 0.05, "source": "request"}
    assert [c["cluster"] for c in body["cluster_weights"]] and len(body["cluster_weights"]) == 3
    ranked = body["ranked"]
    assert {r["llm"] for r in ranked} == {"cheap", "math-pro", "generalist"} and ranked[0]["llm"] == body["chosen_llm"]
    for position, row in enumerate(ranked, 1):
        assert row["rank"] == position and row["error_term"] == row["predicted_error"]
        assert row["cost_term"] == pytest.approx(0.05 * row["predicted_cost_usd"])
        assert row["score"] == pytest.approx(row["error_term"] + row["cost_term"], abs=1e-12)
    assert [r["score"] for r in ranked] == sorted(r["score"] for r in ranked)


def test_route_is_never_charged_and_is_limited_like_chat(served, prompts):
    url, replay, root = served
    body = _body(prompts[0])
    ledger = KeyStore(ledger=SqliteLedger(root / "ledger.sqlite"))
    tenant = KeyPolicy("tenant", usd_per_day=5)
    _chat(_client(url, "tenant"), prompts[0])  # a chat request spends
    spent, before = ledger.remaining(tenant), _asked(replay)
    assert spent < 5
    first = _route(url, "tenant", body)
    for _ in range(3):
        again = _route(url, "tenant", body)
        assert again.status_code == 200 and again.json() == first.json()
    assert ledger.remaining(tenant) == spent and _asked(replay) == before  # nothing held, spent or asked
    assert [_route(url, "slow", body).status_code for _ in range(3)] == [200, 200, 429]  # its request rate
    unauthenticated = httpx.post(f"{url}/v1/route", json=body, timeout=30)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),  # not routed
        ({"model": "uniroute", "messages": []}, 400, "messages"),
        ({"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "cost_weight": -1}, 400, "cost_weight"),
        (
            {"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "max_cost_per_query": 0.001},
            400,
            None,
        ),
        ({"model": "uniroute", "messages": [{"role": "user", "content": "hi"}], "candidates": ["gpt-99"]}, 400, None),
    ],
)
def test_route_refusals_are_openai_errors(served, body, status, param):
    url, replay, _ = served
    before = _asked(replay)
    with pytest.raises(openai.APIStatusError) as refused:
        _client(url).post("/route", cast_to=object, body=body)
    assert refused.value.status_code == status and set(refused.value.body) == {"message", "type", "param", "code"}
    assert refused.value.body["type"] == "invalid_request_error"
    if param is not None:
        assert refused.value.body["param"] == param
    assert _asked(replay) == before


def test_a_keys_budget_and_candidates_bound_its_requests(served, prompts, registry_uri):
    url, replay, _ = served
    bounded = _route(url, "tenant", _body(prompts[0], max_cost_per_query=3.0)).json()
    assert bounded["bounded_by"] == {"kind": "max_cost_per_query", "value": TENANT_MAX_COST, "source": "key"}
    assert {r["llm"] for r in bounded["ranked"]} == set(TENANT_CANDIDATES) and bounded["candidates_source"] == "key"
    cheaper = _route(url, "tenant", _body(prompts[0], max_cost_per_query=0.2)).json()  # a cheaper budget: its own
    assert cheaper["bounded_by"] == {"kind": "max_cost_per_query", "value": 0.2, "source": "request"}
    narrowed = _route(url, "tenant", _body(prompts[0], candidates=["generalist", "cheap"])).json()
    assert [r["llm"] for r in narrowed["ranked"]] == ["cheap"] and narrowed["candidates_source"] == "key"
    assert narrowed["bounded_by"]["source"] == "key"  # the key's default budget
    unaffordable = _route(url, "tenant", _body(prompts[0], candidates=["math-pro"]))  # 1 USD: over the key's 0.25
    error = unaffordable.json()["error"]
    assert unaffordable.status_code == 400 and error["param"] == "max_cost_per_query"
    assert error["message"].startswith("key 'tenant': max_cost_per_query=0.25")

    before = _asked(replay)
    tenant = _client(url, "tenant")
    with pytest.raises(openai.BadRequestError) as refused:  # none of what it asks is among the key's candidates
        _chat(tenant, prompts[0], candidates=["generalist"])
    assert refused.value.body["param"] == "candidates" and "'tenant'" in refused.value.body["message"]

    database = registry_files.sqlite_path(registry_uri)
    servable = ServableRouter().load_dir(registry_files.router_dir(database, "models:/uniroute@champion"))
    curve = servable.operating_points(TENANT_CANDIDATES)
    best = float(curve["accuracy"].max())
    assert budget_mix(curve, max_cost=TENANT_MAX_COST).accuracy < best  # the key's budget cannot buy the best
    with pytest.raises(openai.BadRequestError) as refused:
        _chat(tenant, prompts[0], min_accuracy=best)
    assert refused.value.body["param"] == "min_accuracy" and "key 'tenant'" in refused.value.body["message"]
    assert _asked(replay) == before  # refused before anything was asked


def test_a_key_bounded_chat_request_is_recorded_and_streamed_with_its_bound(served, prompts):
    url, _, root = served
    tenant = _client(url, "tenant")
    raw = _chat(tenant, prompts[1], max_cost_per_query=3.0)  # bounded by the key's
    record = decision_of(root, raw.headers["x-request-id"])
    assert (record["budget_kind"], record["budget_value"]) == ("max_cost_per_query", TENANT_MAX_COST)
    assert raw.headers["X-UniRoute-Bounded-By"] == f"max_cost_per_query={TENANT_MAX_COST:g} (key)"

    body = _body(prompts[1])
    with tenant.chat.completions.with_streaming_response.create(**body, stream=True) as response:
        assert response.headers["X-UniRoute-Bounded-By"] == f"max_cost_per_query={TENANT_MAX_COST:g} (key)"
        first = next(response.iter_lines())  # the comment naming the choice, before the first event
    summary = json.loads(first.removeprefix(": uniroute "))
    explained = _route(url, "tenant", body).json()
    assert summary["llm"] == explained["chosen_llm"] and summary["runner_up"] == explained["ranked"][1]["llm"]
    assert summary["bounded_by"] == {"kind": "max_cost_per_query", "value": TENANT_MAX_COST, "source": "key"}
