"""Spend under concurrency, as clients meet it: 40 requests of a key with a tiny daily budget at once, over two
worker processes sharing one ledger, pass the limit by one request's worst case at most; every answer is charged
what it cost (a stream's usage is asked of the endpoint even when the client did not ask for it)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import polars as pl
import pytest

from profiling.rendering import render_mmlu_pro
from replay import ReplayServer
from serving.ledger import SqliteLedger

from .conftest import gateway_process, post_at_once, write_gateway_catalog

EVE, FRANK = "eve-secret-0123456789abcdef", "frank-secret-0123456789abcdef"
LIMIT_USD = 0.003
MAX_TOKENS = 64


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture(scope="module")
def two_workers(registry_uri, tmp_path_factory, mmlu_like_dir, prices):
    """(URL, root): eve holds LIMIT_USD a day and 600 requests a minute, frank no limits; 2 workers."""
    root = tmp_path_factory.mktemp("gateway_spend")
    keys = root / "keys.yaml"
    keys.write_text(
        f"- {{id: eve, sha256: {_sha(EVE)}, usd_per_day: {LIMIT_USD}, requests_per_minute: 600}}\n"
        f"- {{id: frank, sha256: {_sha(FRANK)}}}\n"
    )
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = root / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        env = {"PROMETHEUS_MULTIPROC_DIR": str(root / "prometheus")}
        with gateway_process(root, catalog, registry_uri, "--keys-file", str(keys), "--workers", "2", env=env) as url:
            yield url, root


def _bodies(data_dir, n: int, **extra) -> list[dict]:
    questions = pl.read_parquet(data_dir / "questions.parquet").head(n)
    prompts = [render_mmlu_pro(q, o, c) for q, o, c in questions.select("question", "options", "category").iter_rows()]
    return [{"model": "generalist", "messages": [{"role": "user", "content": p}], **extra} for p in prompts]


def _spent(root, key_id: str) -> float:
    return SqliteLedger(root / "ledger.sqlite").spent(key_id, datetime.now(UTC).date().isoformat())


def test_forty_concurrent_requests_pass_a_tiny_budget_by_one_worst_case_at_most(two_workers, mmlu_like_dir, prices):
    url, root = two_workers
    bodies = _bodies(mmlu_like_dir, 40, max_tokens=MAX_TOKENS)
    answers = post_at_once(url, EVE, bodies)
    statuses = [status for status, _, _ in answers]
    worst = max((len(str(b).encode()) + 200 + MAX_TOKENS) * prices["generalist"] / 1e6 for b in bodies)
    spent = _spent(root, "eve")
    assert 0 < spent <= LIMIT_USD + worst, (spent, statuses)  # 26x the limit before holds
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 429}
    charged = [float(h["x-uniroute-response-cost"]) for status, h, _ in answers if status == 200]
    assert sum(charged) == pytest.approx(spent)  # every answer says what it cost, and that is what was charged
    ok = next(h for status, h, _ in answers if status == 200)
    assert ok["x-ratelimit-limit-usd"] == f"{LIMIT_USD:g}" and 0 <= float(ok["x-ratelimit-remaining-usd"]) < LIMIT_USD
    assert ok["x-ratelimit-limit-requests"] == "600" and 0 <= int(ok["x-ratelimit-remaining-requests"]) < 600


@pytest.mark.parametrize("stream_options", [{"include_usage": False}, None])
def test_a_stream_is_charged_its_tokens_even_when_the_client_did_not_ask_for_usage(
    two_workers, mmlu_like_dir, prices, stream_options
):
    url, root = two_workers
    extra = {"stream": True, **({"stream_options": stream_options} if stream_options else {})}
    before = _spent(root, "frank")
    answers = post_at_once(url, FRANK, _bodies(mmlu_like_dir, 8, **extra))
    assert {status for status, _, _ in answers} == {200}
    assert all('"usage": {' not in text and '"usage":{' not in text for _, _, text in answers)  # not asked: dropped
    charged = _spent(root, "frank") - before
    # the recorded answers are ~100 tokens: cents of a cent each, never the router's per-query cost (4 USD here)
    assert 0 < charged < 8 * 1000 * prices["generalist"] / 1e6
