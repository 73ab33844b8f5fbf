"""serving.explain on the registered fixture router: which budget bounds a choice (the request's, its key's, the
router's), the explanation's terms, client keys' routing policy in the keys file and ``uniroute route --explain``."""

from __future__ import annotations

import io

import pytest
import yaml

from pipelines.cli import main
from router_core.servable import ServableRouter
from serving import explain, registry_files
from serving.chat_request import ROUTED_MODEL, ChatRequest
from serving.key_policy import ClientError, KeyPolicy, hash_secret
from serving.keys import KeyStore

POOL = ["cheap", "math-pro", "generalist"]
SECRET = "tenant-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def servable(registry_uri) -> ServableRouter:
    database = registry_files.sqlite_path(registry_uri)
    return ServableRouter().load_dir(registry_files.router_dir(database, "models:/uniroute@champion"))


def _key(budget=None, candidates=None) -> KeyPolicy:
    return KeyPolicy("tenant", budget=budget, candidates=candidates)


@pytest.mark.parametrize(
    ("own", "asked", "expected"),
    [
        (None, None, ("none", None, "router")),
        (None, ("cost_weight", 0.2), ("cost_weight", 0.2, "request")),
        (("cost_weight", 0.5), None, ("cost_weight", 0.5, "key")),
        (("cost_weight", 0.5), ("cost_weight", 0.1), ("cost_weight", 0.5, "key")),  # dearer: bounded
        (("cost_weight", 0.5), ("cost_weight", 0.9), ("cost_weight", 0.9, "request")),  # cheaper: the request's
        (("max_cost_per_query", 1.0), ("max_cost_per_query", 3.0), ("max_cost_per_query", 1.0, "key")),
        (("max_cost_per_query", 1.0), ("max_cost_per_query", 0.5), ("max_cost_per_query", 0.5, "request")),
        (("max_cost_per_query", 1.0), ("max_cost_per_query", 1.0), ("max_cost_per_query", 1.0, "request")),  # tie
        (("max_cost_per_query", 0.2), ("cost_weight", 0.0), ("max_cost_per_query", 0.2, "key")),  # other kinds
        (("cost_weight", 0.0), ("max_cost_per_query", 0.2), ("max_cost_per_query", 0.2, "request")),
        (("min_accuracy", 0.5), ("max_cost_per_query", 3.9), ("min_accuracy", 0.5, "key")),
    ],
)
def test_the_cheaper_budget_bounds_the_choice(servable, own, asked, expected):
    bound = explain.resolve_bound(servable, _key(own), asked, POOL)
    assert (bound.kind, bound.value, bound.source) == expected
    assert bound.params == {"candidates": POOL, **({} if expected[0] == "none" else {expected[0]: expected[1]})}


def test_a_minimum_accuracy_the_keys_budget_cannot_buy_is_refused_and_a_bad_key_budget_named(servable):
    with pytest.raises(ClientError) as refused:
        explain.resolve_bound(servable, _key(("max_cost_per_query", 0.2)), ("min_accuracy", 0.9), POOL)
    assert refused.value.status == 400 and refused.value.param == "min_accuracy"
    assert "key 'tenant'" in refused.value.message and "max_cost_per_query=0.2" in refused.value.message
    with pytest.raises(ClientError) as refused:  # below the cheapest routing: the key's own budget, named
        explain.resolve_bound(servable, _key(("max_cost_per_query", 0.01)), ("cost_weight", 0.1), POOL)
    assert refused.value.param == "max_cost_per_query" and refused.value.message.startswith("key 'tenant': ")


def _chat(candidates=None) -> ChatRequest:
    return ChatRequest(ROUTED_MODEL, "What is 2 + 2?", False, {}, candidates=candidates)


def test_a_keys_candidates_bound_the_requests(servable):
    key = _key(candidates=("cheap", "math-pro"))
    assert explain._candidates(key, _chat(), POOL) == (["cheap", "math-pro"], "key")
    assert explain._candidates(key, _chat(["generalist", "cheap"]), POOL) == (["cheap"], "key")  # narrowed
    assert explain._candidates(key, _chat(["math-pro"]), POOL) == (["math-pro"], "request")
    assert explain._candidates(_key(), _chat(), POOL) == (POOL, "router")
    with pytest.raises(ClientError) as refused:
        explain._candidates(key, _chat(["generalist"]), POOL)
    assert refused.value.status == 400 and refused.value.param == "candidates" and "'tenant'" in refused.value.message


def test_the_explanation_ranks_every_candidate_and_its_terms_add_up(servable):
    prompt = "Compute the integral of 3x from 0 to 5."
    bound = explain.resolve_bound(servable, None, ("cost_weight", 0.05), POOL)
    ranked = servable.rank(prompt, servable.embedder.embed([prompt])[0], bound.params)
    body = explain.explanation(ranked, bound, "1", explain.served(None))
    assert body["chosen_llm"] == servable.route([prompt], {"cost_weight": 0.05})["llm"][0]
    assert body["served_alias"] == "champion" and body["shadow"] is None and body["cost_weight"] == 0.05
    assert body["bounded_by"] == {"kind": "cost_weight", "value": 0.05, "source": "request"}
    rows = body["ranked"]
    assert rows[0]["llm"] == body["chosen_llm"] and sorted(r["llm"] for r in rows) == sorted(POOL)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["cost_term"] == pytest.approx(0.05 * row["predicted_cost_usd"])
        assert row["score"] == row["error_term"] + row["cost_term"] and row["error_term"] == row["predicted_error"]
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    weights = [c["weight"] for c in body["cluster_weights"]]
    assert len(weights) == explain.TOP_CLUSTERS and weights == sorted(weights, reverse=True)
    assert explain.short_form(ranked, bound) == {"runner_up": rows[1]["llm"], "bounded_by": body["bounded_by"]}


def test_an_infinite_cost_weight_ranks_by_cost_and_stays_json(servable):
    prompt = "Name a prime."
    bound = explain.resolve_bound(servable, None, ("cost_weight", float("inf")), POOL)
    ranked = servable.rank(prompt, servable.embedder.embed([prompt])[0], bound.params)
    body = explain.explanation(ranked, bound, "1", explain.served(None))
    assert body["cost_weight"] is None and [r["llm"] for r in body["ranked"]] == POOL  # cheapest first
    assert all(r["score"] is None and r["cost_term"] is None for r in body["ranked"])


def test_keys_file_carries_a_tenants_budget_and_candidates(tmp_path):
    entry = {"id": "tenant", "sha256": hash_secret(SECRET), "models": ["cheap", "math-pro"]}
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([{**entry, "max_cost_per_query": 0.5, "candidates": ["math-pro", "cheap"]}]))
    policy = KeyStore.load(path, environ={}).authenticate(SECRET)
    assert policy.budget == ("max_cost_per_query", 0.5) and policy.candidates == ("math-pro", "cheap")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"cost_weight": -1}, "field cost_weight=-1: expected a finite number >= 0"),
        ({"max_cost_per_query": "cheap"}, "field max_cost_per_query='cheap'"),
        ({"min_accuracy": 1.5}, "field min_accuracy=1.5: expected a number in (0, 1]"),
        ({"cost_weight": 0.1, "min_accuracy": 0.5}, "fields cost_weight and min_accuracy: give one of"),
        ({"candidates": ["generalist"]}, "field candidates: 'generalist' is not in the key's models"),
        ({"candidates": ["cheap", "cheap"]}, "field candidates=['cheap', 'cheap']"),
        ({"candidates": []}, "field candidates=[]"),
        ({"candidates": "cheap"}, "field candidates='cheap'"),
    ],
)
def test_a_bad_tenant_policy_is_one_line_naming_the_field(tmp_path, extra, named):
    entry = {"id": "tenant", "sha256": hash_secret(SECRET), "models": ["cheap", "math-pro"], **extra}
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([entry]))
    with pytest.raises(ValueError) as refused:
        KeyStore.load(path, environ={})
    message = str(refused.value)
    assert named in message and "(id='tenant')" in message and len(message.splitlines()) == 1, message


def test_route_explain_prints_one_table_agreeing_with_route(registry_uri, capsys):
    prompt, uri = "Compute the integral of 3x from 0 to 5.", ["--tracking-uri", registry_uri]
    assert main(["route", prompt, "--cost-weight", "0.05", *uri]) == 0
    chosen = capsys.readouterr().out.split("\t")[0]
    assert main(["route", prompt, "--cost-weight", "0.05", "--explain", *uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] == chosen
    assert "router version 1 (champion)" in lines[1] and "bounded by cost_weight=0.05 (request)" in lines[1]
    assert lines[2].split() == [
        "rank",
        "llm",
        "pred.",
        "error",
        "cost",
        "USD",
        "error",
        "term",
        "cost",
        "term",
        "score",
    ]
    assert lines[3].split()[1] == chosen and len(lines) == 3 + len(POOL)
    for line in lines[3:]:
        error, cost_term, score = (float(v) for v in (line.split()[4], line.split()[5], line.split()[6]))
        assert score == pytest.approx(error + cost_term, abs=2e-6)
    assert main(["route", prompt, "--max-cost", "0.01", "--explain", *uri]) == 2  # an impossible budget: named
    err = capsys.readouterr().err
    assert "max_cost_per_query=0.01" in err and len(err.splitlines()) == 1


def test_the_hash_command_writes_a_tenants_policy_and_refuses_two_budgets(monkeypatch, capsys, tmp_path):
    from serving import keys

    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    args = ["hash", "--id", "tenant", "--models", "cheap,math-pro", "--max-cost", "0.5", "--candidates", "cheap"]
    assert keys.main(args) == 0
    path = tmp_path / "keys.yaml"
    path.write_text(capsys.readouterr().out)
    policy = KeyStore.load(path, environ={}).authenticate(SECRET)
    assert policy.budget == ("max_cost_per_query", 0.5) and policy.candidates == ("cheap",)
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    assert keys.main(["hash", "--id", "tenant", "--cost-weight", "0.1", "--min-accuracy", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "fields cost_weight and min_accuracy" in err and len(err.splitlines()) == 1
