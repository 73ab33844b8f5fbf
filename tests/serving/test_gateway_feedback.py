"""Learning from traffic at the gateway, as clients meet it: sampled traffic (opt-in, a key's ``store: false``
wins), ``POST /v1/feedback`` on the requests of the asking key only, rate-limited like chat, and no rating lost when
a gateway of two workers is stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from functools import partial

import aiohttp
import httpx
import openai
import polars as pl
import pytest

from profiling.rendering import render_mmlu_pro
from replay import ReplayServer
from serving.decisions import DecisionLog, read_decisions
from serving.feedback import FeedbackLog, read_feedback
from serving.traffic import read_traffic

from .conftest import gateway_in_process, gateway_process, samples, write_gateway_catalog

SECRETS = {name: f"{name}-secret-0123456789abcdef" for name in ("alice", "bob", "sam", "rita")}


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _keys_file(path) -> None:
    path.write_text(
        f"- {{id: alice, sha256: {_sha(SECRETS['alice'])}}}\n"
        f"- {{id: bob, sha256: {_sha(SECRETS['bob'])}}}\n"
        f"- {{id: sam, sha256: {_sha(SECRETS['sam'])}, store: false}}\n"
        f"- {{id: rita, sha256: {_sha(SECRETS['rita'])}, requests_per_minute: 2}}\n"
    )


@pytest.fixture(scope="module")
def sampling(registry_uri, tmp_path_factory, mmlu_like_dir, prices):
    """(gateway URL, root): every routed request sampled; keys alice, bob, sam (store: false), rita (2 a minute)."""
    root = tmp_path_factory.mktemp("gateway_feedback")
    _keys_file(root / "keys.yaml")
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = root / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        args = ("--keys-file", str(root / "keys.yaml"), "--traffic-sample-rate", "1.0")
        with gateway_process(root, catalog, registry_uri, *args) as url:
            yield url, root


def _prompts(data_dir, n: int = 1) -> list[str]:
    questions = pl.read_parquet(data_dir / "questions.parquet").head(n)
    return [render_mmlu_pro(q, o, c) for q, o, c in questions.select("question", "options", "category").iter_rows()]


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=SECRETS[key], max_retries=0, timeout=30)


def _ask(url: str, key: str, prompt: str, model: str = "uniroute") -> tuple[str, str]:
    """(request id, answer text) of one chat request with the SDK."""
    raw = _client(url, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    return raw.headers["x-request-id"], raw.parse().choices[0].message.content


def _rate(url: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {SECRETS[key]}"}, timeout=30)


def _wait_for(read, directory, expected: int, seconds: float = 10) -> pl.DataFrame:
    """What ``read(directory)`` gives once it holds ``expected`` rows (written off the request path, within the
    logs' flush interval of 2 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = read(directory) if directory.exists() else pl.DataFrame()
        if frame.height >= expected:
            return frame
        time.sleep(0.2)
    raise AssertionError(f"{directory}: fewer than {expected} rows after {seconds} s")


def test_every_routed_request_is_sampled_with_its_text_but_not_a_store_false_keys(sampling, mmlu_like_dir):
    url, root = sampling
    prompt = _prompts(mmlu_like_dir)[0]
    routed, answer = _ask(url, "alice", prompt)
    with _client(url, "alice").chat.completions.with_streaming_response.create(
        model="uniroute", messages=[{"role": "user", "content": prompt}], stream=True
    ) as response:
        streamed = response.headers["x-request-id"]
        pieces = [c.choices[0].delta.content or "" for c in response.parse() if c.choices]
    named, _ = _ask(url, "alice", prompt, model="cheap")  # not routed: never sampled
    kept_out, _ = _ask(url, "sam", prompt)  # store: false wins over the rate
    _wait_for(read_decisions, root / "decisions", 4)
    frame = _wait_for(read_traffic, root / "traffic", 2)
    time.sleep(2.5)  # anything else would be written by now
    frame = read_traffic(root / "traffic")
    assert sorted(frame["request_id"]) == sorted([routed, streamed])
    rows = {row["request_id"]: row for row in frame.iter_rows(named=True)}
    assert rows[routed]["answer"] == answer and rows[streamed]["answer"] == "".join(pieces)
    for row in rows.values():
        assert row["prompt"] == prompt and json.loads(row["messages"]) == [{"role": "user", "content": prompt}]
        assert row["key_id"] == "alice" and row["router_version"] == "1" and row["chosen_llm"] in {"cheap", "math-pro"}
        assert len(row["cluster_weights"]) == 3 and row["embedder_id"]
    decisions = read_decisions(root / "decisions")
    assert {named, kept_out} <= set(decisions["request_id"])  # served and decided, just not stored


def test_a_key_rates_its_own_requests_only(sampling, mmlu_like_dir):
    url, root = sampling
    mine, _ = _ask(url, "alice", _prompts(mmlu_like_dir)[0])
    first = _rate(url, "alice", {"request_id": mine, "score": 0.8})
    assert first.status_code == 200, first.text
    assert first.json() == {**first.json(), "object": "feedback", "request_id": mine, "score": 0.8}
    assert _rate(url, "alice", {"request_id": mine, "thumbs": "down"}).status_code == 200  # a new rating stands

    refused = _rate(url, "bob", {"request_id": mine, "thumbs": "up"})
    error = refused.json()["error"]
    assert refused.status_code == 403 and error["param"] == "request_id" and error["type"] == "permission_error"
    assert "alice" not in error["message"]  # whose request it is stays unsaid
    for unknown in (uuid.uuid4().hex, mine[:16], mine[:16] + "0" * 16):
        missing = _rate(url, "alice", {"request_id": unknown, "score": 1})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "request_id", unknown

    frame = _wait_for(read_feedback, root / "feedback", 2).filter(pl.col("request_id") == mine).sort("at")
    assert frame["score"].to_list() == [0.8, 0.0] and set(frame["key_id"]) == {"alice"}
    assert set(frame["source"]) == {"api"} and frame["feedback_id"].n_unique() == 2


def test_an_id_no_mac_explains_is_answered_from_the_decision_files(sampling):
    url, root = sampling
    with DecisionLog(root / "decisions", process_tag="before-the-secret-changed", flush_interval_s=0.01) as log:
        log.record({"request_id": "0badc0de0badc0de", "key_id": "alice", "status": 200})  # an older gateway's id
    assert _rate(url, "alice", {"request_id": "0badc0de0badc0de", "thumbs": "up"}).status_code == 200
    refused = _rate(url, "bob", {"request_id": "0badc0de0badc0de", "thumbs": "up"})
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "request_id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"score": 1.5}, "score"),
        ({"thumbs": "sideways"}, "thumbs"),
        ({"score": 1, "thumbs": "up"}, "score"),
        ({"request_id": None, "score": 1}, "request_id"),
        ({"feedback": [{"score": 0.5}, {"score": -0.1}]}, "feedback[1].score"),
    ],
)
def test_a_bad_rating_is_a_400_naming_its_field(sampling, body, param):
    url, _ = sampling
    some_id = {"request_id": "0" * 32}
    filled = {"feedback": [{**some_id, **i} for i in body["feedback"]]} if "feedback" in body else {**some_id, **body}
    answer = _rate(url, "alice", filled)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == param and param.split(".")[-1] in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_batch_is_rated_whole_or_refused_whole(sampling, mmlu_like_dir):
    url, root = sampling
    prompts = _prompts(mmlu_like_dir, 3)
    ids = [_ask(url, "alice", p)[0] for p in prompts[:2]]
    bobs, _ = _ask(url, "bob", prompts[2])
    mixed = _rate(url, "alice", {"feedback": [{"request_id": ids[0], "score": 0.1}, {"request_id": bobs, "score": 1}]})
    assert mixed.status_code == 403 and mixed.json()["error"]["param"] == "feedback[1].request_id"
    batch = _rate(
        url, "alice", {"feedback": [{"request_id": ids[0], "score": 0.5}, {"request_id": ids[1], "thumbs": "up"}]}
    )
    assert batch.status_code == 200 and [d["score"] for d in batch.json()["data"]] == [0.5, 1.0]
    frame = _wait_for(read_feedback, root / "feedback", 1)
    time.sleep(2.5)
    frame = read_feedback(root / "feedback").filter(pl.col("request_id").is_in(ids))
    assert sorted(frame["score"]) == [0.5, 1.0]  # the refused batch left nothing


def test_ratings_count_against_the_keys_rate_limit(sampling, mmlu_like_dir):
    url, _ = sampling
    mine, _ = _ask(url, "rita", _prompts(mmlu_like_dir)[0])  # 1 of 2 a minute
    assert _rate(url, "rita", {"request_id": mine, "score": 1}).status_code == 200  # 2 of 2
    over = _rate(url, "rita", {"request_id": mine, "score": 0})
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(over.headers["Retry-After"]) >= 1


async def _chat_then_rate(url: str, prompts: list[str]) -> tuple[list[str], list[int]]:
    """Every prompt asked at once, each answer rated as soon as it comes (before its decision is written, on either
    worker), then all of them again in one batch: (request ids, rating statuses)."""
    headers = {"Authorization": f"Bearer {SECRETS['alice']}"}
    connector = aiohttp.TCPConnector(force_close=True)  # a connection per request: either worker may take each
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:

        async def post(path: str, body: dict) -> aiohttp.ClientResponse:
            async with session.post(f"{url}{path}", json=body) as response:
                await response.read()
                return response

        async def chat_then_rate(n: int, prompt: str) -> tuple[str, int]:
            chat = {"model": "uniroute", "messages": [{"role": "user", "content": prompt}]}
            request_id = (await post("/v1/chat/completions", chat)).headers["x-request-id"]
            rated = await post("/v1/feedback", {"request_id": request_id, "score": n / len(prompts)})
            return request_id, rated.status

        done = await asyncio.gather(*(chat_then_rate(n, p) for n, p in enumerate(prompts)))
        ids = [request_id for request_id, _ in done]
        batch = await post("/v1/feedback", {"feedback": [{"request_id": i, "thumbs": "up"} for i in ids]})
    return ids, [status for _, status in done] + [batch.status]


def test_sigterm_to_two_workers_loses_no_rating(registry_uri, tmp_path, mmlu_like_dir, prices):
    _keys_file(tmp_path / "keys.yaml")
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        args = ("--keys-file", str(tmp_path / "keys.yaml"), "--workers", "2")
        env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
        with gateway_process(tmp_path, catalog, registry_uri, *args, env=env) as url:
            ids, statuses = asyncio.run(_chat_then_rate(url, _prompts(mmlu_like_dir, 40)))
        # SIGTERM went to both workers as the last ratings came in: each wrote what it had queued
    assert statuses == [200] * 41  # whichever worker served a request, either may take its rating
    frame = read_feedback(tmp_path / "feedback")
    assert frame.height == 80 and frame.group_by("request_id").len()["len"].to_list() == [2] * 40
    assert set(frame["request_id"]) == set(ids) and set(frame["key_id"]) == {"alice"}
    assert read_traffic(tmp_path / "traffic").height == 0 and not (tmp_path / "traffic").exists()  # sampling off


class HeldFeedbackLog(FeedbackLog):
    """A feedback log whose writer takes nothing off its queue until ``release`` is set (a disk that hangs); it
    still tells its metrics every second, as the writer does while idle."""

    def __init__(self, *args, **kwargs):
        self.release = threading.Event()
        super().__init__(*args, **kwargs)

    def _collect(self):
        if self.release.is_set() or self._stop.is_set():
            return super()._collect()
        self.release.wait(0.05)
        return []


def _scrape_until(url: str, wanted: dict[tuple[str, tuple], float], seconds: float = 10) -> dict:
    """The gateway's /metrics samples once they hold every ``wanted`` value (the writers tell every second)."""
    deadline = time.monotonic() + seconds
    while True:
        got = samples(httpx.get(f"{url}/metrics", timeout=30).content)
        if all(got.get(name) == value for name, value in wanted.items()) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_a_burst_of_ratings_past_the_feedback_queue_shows_in_metrics(
    registry_uri, tmp_path, mmlu_like_dir, prices, monkeypatch
):
    monkeypatch.setattr("serving.gateway.FeedbackLog", partial(HeldFeedbackLog, max_queue=4))
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        settings = {"traffic_dir": str(tmp_path / "traffic"), "traffic_sample_rate": 1.0}
        with gateway_in_process(tmp_path, catalog, registry_uri, **settings) as (url, gateway):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
            mine = client.chat.completions.with_raw_response.create(
                model="uniroute", messages=[{"role": "user", "content": _prompts(mmlu_like_dir)[0]}]
            ).headers["x-request-id"]

            def rate(n: int) -> int:
                body = {"feedback": [{"request_id": mine, "score": 1.0}] * n}
                return httpx.post(f"{url}/v1/feedback", json=body, timeout=30).status_code

            assert [rate(3), rate(2), rate(1), rate(1)] == [200, 503, 200, 503]  # 4 queued, 2 + 1 dropped
            feedback_log = (("log", "feedback"),)
            wanted = {
                ("uniroute_record_log_queue_depth", feedback_log): 4,
                ("uniroute_record_log_dropped_total", feedback_log): 3,
                ("uniroute_record_log_dropped_total", (("log", "traffic"),)): 0,
                ("uniroute_record_log_dropped_total", (("log", "decision"),)): 0,
            }
            assert {name: _scrape_until(url, wanted).get(name) for name in wanted} == wanted
            time.sleep(2.5)  # two more reports of the same totals: nothing counted twice
            again = _scrape_until(url, wanted)
            assert {name: again.get(name) for name in wanted} == wanted
            assert again["uniroute_decision_log_dropped_total", ()] == 0  # the feedback log's drops are its own
            assert ("uniroute_record_log_queue_depth", (("log", "traffic"),)) in again
            gateway.feedback.release.set()
    assert read_feedback(tmp_path / "feedback").height == 4  # what was queued is written at the stop
