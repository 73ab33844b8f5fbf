"""The replay endpoint on a real uvicorn server on 127.0.0.1, over the tiny MMLU-Pro-like fixture dataset and a
chat dataset in the generic prompt file format."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest

import warehouse as wh
from pipelines.cli import main as uniroute
from profiling import cli
from profiling.datasets import DatasetSpec, get_adapter, prepare_prompts, read_prompt_file, write_prompt_set
from profiling.rendering import estimate_tokens, render_mmlu_pro
from replay import (
    SPREAD_KINDS,
    FaultKind,
    FaultRates,
    ReplayConfig,
    ReplayData,
    ReplayServer,
    create_app,
)
from router_core.embedding import prompt_hash

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = ["math-pro", "history-pro", "bio-pro", "generalist", "cheap", "last"]


@pytest.fixture(scope="module")
def replay_data(mmlu_like_dir: Path) -> ReplayData:
    return ReplayData.from_dataset(mmlu_like_dir)


@pytest.fixture(scope="module")
def server(replay_data: ReplayData) -> Iterator[ReplayServer]:
    with ReplayServer(replay_data) as replay:
        yield replay


@pytest.fixture
def client(server: ReplayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/_replay/reset").raise_for_status()
        yield http


def chat(http: httpx.Client, model: str, content: object, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return http.post("/v1/chat/completions", json=body)


def assert_openai_error(response: httpx.Response, status: int, code: str | None, param: str | None) -> str:
    """Check OpenAI's error shape; return the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    return error["message"]


# ---- answers ----


@pytest.mark.parametrize(("model", "question_id"), [("math-pro", 1), ("cheap", 2), ("last", 11), ("bio-pro", 119)])
def test_serves_the_recorded_response_with_usage(client, prompts, recorded, model, question_id):
    response = chat(client, model, prompts[question_id])
    assert response.status_code == 200, response.text
    body = response.json()
    answer = recorded[model, question_id]
    assert body["object"] == "chat.completion"
    assert body["model"] == model
    assert body["id"].startswith("chatcmpl-")
    assert abs(body["created"] - time.time()) < 60
    assert body["choices"][0]["message"] == {"role": "assistant", "content": answer}
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt_tokens, completion_tokens = estimate_tokens(prompts[question_id]), estimate_tokens(answer)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def test_answers_differ_per_question_and_ids_per_request(client, prompts, recorded):
    first, second = chat(client, "cheap", prompts[1]).json(), chat(client, "cheap", prompts[2]).json()
    assert recorded["cheap", 1] != recorded["cheap", 2]
    assert [first["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"]] == [
        recorded["cheap", 1],
        recorded["cheap", 2],
    ]
    assert first["id"] != second["id"]


def test_the_last_user_message_identifies_the_question(client, prompts, recorded):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": prompts[5]},
        {"role": "assistant", "content": "Thinking..."},
        {"role": "user", "content": [{"type": "text", "text": part} for part in (prompts[7][:50], prompts[7][50:])]},
    ]
    response = client.post("/v1/chat/completions", json={"model": "generalist", "messages": messages})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == recorded["generalist", 7]
    all_text = "\n".join(["You are terse.", prompts[5], "Thinking...", prompts[7]])
    assert body["usage"]["prompt_tokens"] == estimate_tokens(all_text)


def test_models_lists_every_model(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == MODELS
    assert {m["object"] for m in body["data"]} == {"model"}
    assert client.get("/v1/models/cheap").json()["id"] == "cheap"
    assert_openai_error(client.get("/v1/models/gpt-17"), 404, "model_not_found", "model")


def test_identical_prompts_are_served_from_a_question_the_model_answered(tmp_path):
    question = {"question": "Same?", "options": ["yes", "no"], "answer": "A", "category": "math", "src": "t"}
    pl.DataFrame([{"question_id": qid, **question} for qid in (1, 2)]).write_parquet(tmp_path / "questions.parquet")
    answers = [("a", 2, "a on 2"), ("b", 1, "b on 1"), ("b", 2, "b on 2")]
    pl.DataFrame(
        [{"model": m, "question_id": q, "response": r, "pred": "A", "correct": 1} for m, q, r in answers]
    ).write_parquet(tmp_path / "responses.parquet")
    pl.DataFrame({"model": ["a", "b"], "usd_per_mtok": [1.0, 2.0]}).write_csv(tmp_path / "models.csv")
    prompt = render_mmlu_pro("Same?", ["yes", "no"], "math")
    with ReplayServer(tmp_path) as replay, httpx.Client(base_url=replay.url) as http:
        contents = [chat(http, model, prompt).json()["choices"][0]["message"]["content"] for model in ("a", "b")]
        assert contents == ["a on 2", "b on 1"]
        assert {(row["model"], row["prompt_id"]) for row in http.get("/_replay/requests").json()} == {
            ("a", "mmlu_pro/2"),
            ("b", "mmlu_pro/1"),
        }


# ---- datasets ----


def test_the_mmlu_pro_adapter_renders_what_render_mmlu_pro_renders(mmlu_like_dir, prompts, replay_data):
    rows, spec = get_adapter("mmlu_pro").load(mmlu_like_dir)
    prepared = prepare_prompts("mmlu_pro", rows, spec)
    sent = {pid: json.loads(m)[-1] for pid, m in zip(prepared["prompt_id"], prepared["messages"], strict=True)}
    assert sent == {f"mmlu_pro/{qid}": {"role": "user", "content": text} for qid, text in prompts.items()}
    assert dict(zip(prepared["prompt_id"], prepared["prompt"], strict=True)) == {
        f"mmlu_pro/{qid}": text for qid, text in prompts.items()
    }
    expected: dict[str, list[str]] = {}
    for qid, text in prompts.items():
        expected.setdefault(prompt_hash(text), []).append(f"mmlu_pro/{qid}")
    assert replay_data.prompt_ids_by_hash == {key: tuple(sorted(ids)) for key, ids in expected.items()}
    assert replay_data.n_prompts == 120 and replay_data.n_responses == 708


SYSTEM = "Answer with the city's name only."
FEW_SHOT = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
#: file id -> the question (the last user turn); "007" checks that ids stay text.
QUESTIONS = {"q1": "Capital of Italy?", "q2": "Capital of Spain?", "007": "Capital of Japan?"}
REFERENCES = {"q1": "Rome", "q2": "Madrid", "007": "Tokyo"}
#: (model, file id, response); beta's null answer to q2 is not recorded.
ANSWERS = [
    ("alpha", "q1", "Rome"),
    ("alpha", "q2", "Madrid"),
    ("alpha", "007", "Kyoto"),
    ("beta", "q1", "Milan"),
    ("beta", "q2", None),
    ("beta", "007", "Tokyo"),
]


def conversation(question: str) -> list[dict[str, str]]:
    """What a chat prompt of the fixture sends: a system message, one few-shot exchange, the question."""
    return [{"role": "system", "content": SYSTEM}, *FEW_SHOT, {"role": "user", "content": question}]


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    """A prompt file (JSONL) of chat prompts with exact-match references."""
    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "prompt_id": pid,
            "prompt": question,
            "messages": conversation(question),
            "reference": REFERENCES[pid],
            "grader": "exact_match",
        }
        for pid, question in QUESTIONS.items()
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def answers_frame(prefix: str = "") -> pl.DataFrame:
    return pl.DataFrame(
        [{"model": m, "prompt_id": f"{prefix}{pid}", "response": r} for m, pid, r in ANSWERS],
        schema={"model": pl.String, "prompt_id": pl.String, "response": pl.String},
    )


def write_answers(path: Path) -> Path:
    writers = {
        ".parquet": pl.DataFrame.write_parquet,
        ".csv": pl.DataFrame.write_csv,
        ".jsonl": pl.DataFrame.write_ndjson,
    }
    writers[path.suffix](answers_frame(), path)
    return path


def test_from_frames_indexes_chat_prompts_by_their_last_user_message(chat_file):
    prepared = prepare_prompts("chat", read_prompt_file(chat_file), DatasetSpec())
    data = ReplayData.from_frames(prepared, answers_frame("chat/"))
    assert data.prompt_ids_by_hash == {prompt_hash(q): (f"chat/{pid}",) for pid, q in QUESTIONS.items()}
    assert data.models == ("alpha", "beta")
    assert data.responses["beta"] == {"chat/q1": "Milan", "chat/007": "Tokyo"}  # the null answer is skipped
    assert data.n_prompts == 3 and data.n_responses == 5
    # without messages the prompt (the user turn) is the key; models keep the order given
    by_prompt = ReplayData.from_frames(prepared.drop("messages"), answers_frame("chat/"), models=["beta", "alpha"])
    assert by_prompt.prompt_ids_by_hash == data.prompt_ids_by_hash and by_prompt.models == ("beta", "alpha")


def test_a_chat_dataset_is_answered_over_http(chat_file, tmp_path):
    data = ReplayData.from_dataset(chat_file, responses=write_answers(tmp_path / "answers.jsonl"))
    recorded = {(m, f"chat/{pid}"): r for m, pid, r in ANSWERS}
    with ReplayServer(data) as replay, httpx.Client(base_url=replay.url, timeout=10) as http:
        for model in ("alpha", "beta"):
            for pid in ("q1", "007"):
                messages = conversation(QUESTIONS[pid])
                response = http.post("/v1/chat/completions", json={"model": model, "messages": messages})
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["choices"][0]["message"]["content"] == recorded[model, f"chat/{pid}"]
                texts = "\n".join(m["content"] for m in messages)
                assert body["usage"]["prompt_tokens"] == estimate_tokens(texts)
        missing = http.post("/v1/chat/completions", json={"model": "beta", "messages": conversation(QUESTIONS["q2"])})
        assert "'chat/q2'" in assert_openai_error(missing, 404, "response_not_recorded", "messages")
        # the few-shot question is no prompt of the dataset: only the last user message identifies one
        shot = http.post(
            "/v1/chat/completions", json={"model": "alpha", "messages": conversation("Capital of France?")}
        )
        assert_openai_error(shot, 404, "prompt_not_found", "messages")
        assert_openai_error(chat(http, "alpha", SYSTEM), 404, "prompt_not_found", "messages")
        log = {
            (row["model"], row["prompt_id"], row["outcome"]): row["count"]
            for row in http.get("/_replay/requests").json()
        }
    assert log == {
        ("alpha", "chat/q1", "ok"): 1,
        ("alpha", "chat/007", "ok"): 1,
        ("beta", "chat/q1", "ok"): 1,
        ("beta", "chat/007", "ok"): 1,
        ("beta", "chat/q2", "response_not_recorded"): 1,
        ("alpha", None, "prompt_not_found"): 2,
    }


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_responses_files_give_file_ids_prefixed_by_the_dataset(chat_file, tmp_path, suffix):
    answers = write_answers(tmp_path / f"answers{suffix}")
    assert ReplayData.from_dataset(chat_file, responses=answers).responses["beta"] == {
        "chat/q1": "Milan",
        "chat/007": "Tokyo",
    }
    named = ReplayData.from_dataset(chat_file, dataset="capitals", responses=answers)
    assert named.prompt_ids_by_hash[prompt_hash(QUESTIONS["007"])] == ("capitals/007",)
    assert set(named.responses["alpha"]) == {"capitals/q1", "capitals/q2", "capitals/007"}


def test_from_warehouse_serves_the_stored_prompts(chat_file, tmp_path):
    with wh.connect(tmp_path / "w.duckdb") as con:
        write_prompt_set(con, "chat", read_prompt_file(chat_file), DatasetSpec())
        data = ReplayData.from_warehouse(con, answers_frame("chat/"))
    assert data == ReplayData.from_frames(
        prepare_prompts("chat", read_prompt_file(chat_file), DatasetSpec()), answers_frame("chat/")
    )


def test_unservable_data_is_refused_by_name(chat_file, tmp_path):
    with pytest.raises(ValueError, match="no recorded responses"):
        ReplayServer(chat_file)
    stored_ids = tmp_path / "stored.parquet"
    answers_frame("chat/").write_parquet(stored_ids)  # warehouse ids where file ids are expected
    with pytest.raises(ValueError, match="'chat/chat/q1'"):
        ReplayData.from_dataset(chat_file, responses=stored_ids)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ReplayData.from_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="'messages' or a 'prompt'"):
        ReplayData.from_frames(pl.DataFrame({"prompt_id": ["a"]}), answers_frame())
    with pytest.raises(ValueError, match=r"responses: missing column\(s\) \['response'\]"):
        ReplayData.from_frames(pl.DataFrame({"prompt_id": ["a"], "prompt": ["x"]}), answers_frame().drop("response"))


# ---- errors ----


def test_unknown_model_is_a_404_in_openai_format(client, prompts):
    message = assert_openai_error(chat(client, "gpt-17", prompts[1]), 404, "model_not_found", "model")
    assert "gpt-17" in message


def test_unknown_prompt_is_a_404(client, prompts):
    assert_openai_error(chat(client, "math-pro", "What is 2 + 2?"), 404, "prompt_not_found", "messages")
    # the exact rendered text is the key: a trailing space is another prompt
    assert_openai_error(chat(client, "math-pro", prompts[1] + " "), 404, "prompt_not_found", "messages")


def test_a_model_lacking_the_answer_is_a_404_naming_the_prompt(client, prompts):
    message = assert_openai_error(chat(client, "last", prompts[10]), 404, "response_not_recorded", "messages")
    assert "'last'" in message and "'mmlu_pro/10'" in message
    assert chat(client, "generalist", prompts[10]).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "cheap", "messages": [', None),
        (b'["cheap"]', None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "cheap", "messages": "hi"}', "messages"),
        (b'{"model": "cheap", "messages": []}', "messages"),
        (b'{"model": "cheap", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"model": "cheap", "messages": [{"role": "user", "content": 42}]}', "messages[0].content"),
        (b'{"model": "cheap", "messages": [{"role": "user", "content": [{"type": "png"}]}]}', "messages[0].content[0]"),
        (b'{"model": "cheap", "messages": [{"role": "system", "content": "hi"}]}', "messages"),
        (b'{"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "stream_options": 1}', "stream_options"),
    ],
)
def test_malformed_body_is_a_400_naming_the_field(client, body, param):
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    message = assert_openai_error(response, 400, "invalid_request", param)
    if param is not None:
        assert message.startswith(param.split("[")[0])


def test_unknown_route_is_a_404_in_openai_format(client):
    assert_openai_error(client.get("/v2/everything"), 404, "not_found", None)


# ---- latency ----


def test_latency_applies_per_model_overrides(replay_data, prompts):
    config = ReplayConfig(latency_ms=0, model_latency_ms={"cheap": 500})
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url) as http:
        elapsed = {}
        for model in ("cheap", "math-pro"):
            started = time.perf_counter()
            assert chat(http, model, prompts[1]).status_code == 200
            elapsed[model] = time.perf_counter() - started
    assert elapsed["cheap"] >= 0.5
    assert elapsed["math-pro"] < 0.5


def test_latency_does_not_block_the_event_loop(replay_data, prompts):
    async def eight_at_once(base_url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=base_url) as http:
            body = {"model": "cheap", "messages": [{"role": "user", "content": prompts[3]}]}
            responses = await asyncio.gather(*(http.post("/chat/completions", json=body) for _ in range(8)))
            return [r.status_code for r in responses]

    with ReplayServer(replay_data, ReplayConfig(latency_ms=1000)) as replay:
        started = time.perf_counter()
        assert asyncio.run(eight_at_once(replay.base_url)) == [200] * 8
        elapsed = time.perf_counter() - started
    # concurrent sleeps take ~1 s, one after another 8 s: the bound leaves 3 s for a busy machine's overhead
    assert 1.0 <= elapsed < 4.0


# ---- faults ----


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        (FaultKind.RATE_LIMITED, 429, "rate_limit_exceeded"),
        (FaultKind.SERVER_ERROR, 500, "internal_error"),
        (FaultKind.UNAVAILABLE, 503, "unavailable"),
    ],
)
def test_error_faults_at_rate_one(replay_data, prompts, kind, status, code):
    config = ReplayConfig(faults=FaultRates(**{kind.value: 1.0}), retry_after_seconds=7)
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url) as http:
        for _ in range(3):
            response = chat(http, "cheap", prompts[1])
            assert_openai_error(response, status, code, None)
            assert response.headers.get("retry-after") == ("7" if kind is FaultKind.RATE_LIMITED else None)
        assert replay.request_log.totals() == {kind.value: 3}


def test_truncated_fault_is_a_200_whose_json_does_not_parse(replay_data, prompts):
    with (
        ReplayServer(replay_data, ReplayConfig(faults=FaultRates(truncated=1.0))) as replay,
        httpx.Client(base_url=replay.url) as http,
    ):
        response = chat(http, "cheap", prompts[1])
        assert replay.request_log.totals() == {"truncated": 1}
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_hang_fault_outlasts_the_client_timeout_and_ends_when_the_client_leaves(replay_data, prompts):
    config = ReplayConfig(faults=FaultRates(hang=1.0), hang_seconds=30)
    replay = ReplayServer(replay_data, config, shutdown_timeout_s=10).start()
    try:
        with httpx.Client(base_url=replay.url, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
            chat(http, "cheap", prompts[1])
        assert replay.request_log.totals() == {"hang": 1}
    finally:
        started = time.perf_counter()
        replay.stop()
    # the hang noticed the disconnect: shutdown did not wait for its 30 s nor for the 10 s grace period
    assert time.perf_counter() - started < 5


def test_a_hang_shorter_than_the_client_timeout_ends_in_a_504(replay_data, prompts):
    config = ReplayConfig(faults=FaultRates(hang=1.0), hang_seconds=0.2)
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url, timeout=5) as http:
        started = time.perf_counter()
        assert_openai_error(chat(http, "cheap", prompts[1]), 504, "timeout", None)
        assert time.perf_counter() - started >= 0.2


def test_fault_rate_spreads_over_every_kind_reproducibly(replay_data, prompts):
    config = ReplayConfig(faults=FaultRates.spread(0.5), hang_seconds=0.01, seed=3)
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url) as http:

        def statuses() -> list[int]:
            return [chat(http, "cheap", prompts[i % 120]).status_code for i in range(200)]

        first = statuses()
        totals = http.get("/_replay/stats").json()
        http.post("/_replay/reset").raise_for_status()
        assert statuses() == first  # reset restarts the seeded draws
    assert set(totals) == {"ok", *SPREAD_KINDS}
    assert 60 < totals["ok"] < 140
    assert sorted(set(first)) == [200, 429, 500, 503, 504]


def test_fault_rates_are_validated():
    with pytest.raises(ValueError, match="hang"):
        FaultRates(hang=1.5)
    with pytest.raises(ValueError, match="sum"):
        FaultRates(rate_limited=0.6, truncated=0.6)
    assert FaultRates.spread(0.5).total == pytest.approx(0.5)
    assert FaultRates.spread(0.5).hang == pytest.approx(0.1)


def test_latency_override_for_an_unknown_model_is_refused(replay_data):
    with pytest.raises(ValueError, match="gpt-17"):
        create_app(replay_data, ReplayConfig(model_latency_ms={"gpt-17": 10}))


# ---- request log ----


def test_request_log_counts_per_model_prompt_and_outcome(client, server, prompts):
    for _ in range(3):
        chat(client, "math-pro", prompts[4])
    chat(client, "bio-pro", prompts[4])
    chat(client, "gpt-17", prompts[4])
    chat(client, "last", prompts[20])
    chat(client, "math-pro", "not a question")
    client.post("/v1/chat/completions", content=b"{")

    stats = client.get("/_replay/stats").json()
    assert stats == {
        "ok": 4,
        "model_not_found": 1,
        "response_not_recorded": 1,
        "prompt_not_found": 1,
        "invalid_request": 1,
    }
    rows = client.get("/_replay/requests").json()
    counts = {(row["model"], row["prompt_id"], row["outcome"]): row["count"] for row in rows}
    assert counts == {
        ("math-pro", "mmlu_pro/4", "ok"): 3,
        ("bio-pro", "mmlu_pro/4", "ok"): 1,
        ("gpt-17", None, "model_not_found"): 1,
        ("last", "mmlu_pro/20", "response_not_recorded"): 1,
        ("math-pro", None, "prompt_not_found"): 1,
        (None, None, "invalid_request"): 1,
    }
    frame = server.request_log.frame()
    columns = ("model", "prompt_id", "outcome", "served_by")
    assert frame.schema == {**dict.fromkeys(columns, pl.String), "count": pl.Int64}
    served = {(row["model"], row["outcome"]): row["served_by"] for row in rows}
    assert served[("math-pro", "ok")] == "math-pro" and served[("gpt-17", "model_not_found")] is None
    assert frame["count"].sum() == 8

    assert client.post("/_replay/reset").status_code == 200
    assert client.get("/_replay/stats").json() == {}


# ---- the command line ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_answers_and_stops_on_sigterm(mmlu_like_dir, prompts, recorded):
    port = free_port()
    command = [sys.executable, "-m", "pipelines.cli", "replay-server", "--data", str(mmlu_like_dir)]
    command += ["--port", str(port), "--latency-ms", "1", "--model-latency", "cheap=2", "--seed", "1"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "replay-server did not answer within 30 s"
            try:
                if httpx.get(f"{base_url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with httpx.Client(base_url=base_url, timeout=5) as http:
            response = chat(http, "cheap", prompts[9])
            assert response.json()["choices"][0]["message"]["content"] == recorded["cheap", 9]
            assert http.get("/_replay/stats").json() == {"ok": 1}
    finally:
        process.terminate()
        output = process.communicate(timeout=15)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit 0 on older versions)
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Finished server process" in output
    assert "708 responses of 6 models to 120 prompts" in output


def test_cli_names_the_missing_data_dir_and_its_variable(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere"
    assert uniroute(["replay-server", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "UNIROUTE_MMLU_PRO_DIR" in err and str(missing) in err

    monkeypatch.setenv("UNIROUTE_MMLU_PRO_DIR", str(tmp_path / "from-env"))
    assert uniroute(["replay-server"]) == 2
    assert "from-env" in capsys.readouterr().err
    monkeypatch.delenv("UNIROUTE_MMLU_PRO_DIR")
    assert cli.default_data_dir() == PROJECT_ROOT.parent / "shared" / "data" / "mmlu_pro"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model-latency", "cheap"], "--model-latency: expected KEY=NUMBER"),
        (["--fault", "meteor=0.1"], "--fault: unknown kind 'meteor'"),
        (["--fault-rate", "0.5", "--fault", "hang=0.9"], "sum to"),
        (["--model-latency", "gpt-17=5"], "gpt-17"),
    ],
)
def test_cli_rejects_bad_options_by_name(mmlu_like_dir, capsys, extra, expected):
    try:
        code = uniroute(["replay-server", "--data", str(mmlu_like_dir), *extra])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2 and expected in capsys.readouterr().err


# ---- streaming ----


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` values of a server-sent event stream, in order."""
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]


def stream_chat(http: httpx.Client, model: str, content: str, **extra: object) -> tuple[httpx.Response, list[str]]:
    response = chat(http, model, content, stream=True, **extra)
    return response, sse_events(response)


def test_stream_sends_the_answer_in_chunks_then_done(client, prompts, recorded):
    response, events = stream_chat(client, "math-pro", prompts[3])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:]]
    assert "".join(pieces) == recorded["math-pro", 3]
    assert 6 <= len([p for p in pieces if p]) <= 8
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)  # not asked for
    assert client.get("/_replay/stats").json() == {"ok": 1}


def test_stream_ends_with_usage_when_asked(client, prompts, recorded):
    _, events = stream_chat(client, "cheap", prompts[4], stream_options={"include_usage": True})
    chunks = [json.loads(e) for e in events[:-1]]
    final = chunks[-1]
    assert final["choices"] == []
    answer = recorded["cheap", 4]
    tokens = estimate_tokens(prompts[4]), estimate_tokens(answer)
    assert final["usage"] == {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert events[-1] == "[DONE]"


def test_stream_chunks_are_paced_by_the_chunk_delay(replay_data, prompts):
    config = ReplayConfig(stream_chunk_delay_ms=50)
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url, timeout=10) as http:
        started = time.perf_counter()
        with http.stream("POST", "/v1/chat/completions", json=stream_body("cheap", prompts[1])) as response:
            arrivals = [time.perf_counter() - started for _ in response.iter_lines()]
    assert arrivals[0] < 0.3  # the role chunk comes at once
    assert arrivals[-1] >= 8 * 0.05


def stream_body(model: str, content: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}


@pytest.mark.parametrize(
    ("faults", "status"),
    [(FaultRates(rate_limited=1.0), 429), (FaultRates(server_error=1.0), 500), (FaultRates(unavailable=1.0), 503)],
)
def test_stream_faults_strike_before_the_first_byte(replay_data, prompts, faults, status):
    with ReplayServer(replay_data, ReplayConfig(faults=faults)) as replay, httpx.Client(base_url=replay.url) as http:
        response = http.post("/v1/chat/completions", json=stream_body("cheap", prompts[1]))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"].startswith("injected fault")


def test_truncated_stream_stops_halfway_without_done(replay_data, prompts):
    config = ReplayConfig(faults=FaultRates(truncated=1.0))
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url) as http:
        response = http.post("/v1/chat/completions", json=stream_body("cheap", prompts[1]))
    events = sse_events(response)
    assert response.status_code == 200
    assert 2 <= len(events) <= 6 and "[DONE]" not in events


def test_mid_stream_drop_closes_the_connection(replay_data, prompts):
    config = ReplayConfig(faults=FaultRates(mid_stream_drop=1.0))
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url) as http:
        received = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            http.stream("POST", "/v1/chat/completions", json=stream_body("cheap", prompts[1])) as response,
        ):
            assert response.status_code == 200
            received.extend(response.iter_lines())
        assert any(line.startswith("data: {") for line in received)
        with pytest.raises(httpx.RemoteProtocolError):  # a plain answer: half its body, then the close
            chat(http, "cheap", prompts[1])
        assert replay.request_log.totals() == {"mid_stream_drop": 2}


def test_the_package_exports_each_public_name_from_its_module():
    """``replay`` loads its names on first use (``uniroute --help`` imports ``replay.cli`` only)."""
    import replay

    assert replay.ReplayServer is ReplayServer and replay.create_app is create_app
    assert all(getattr(replay, name) is not None for name in replay.__all__)
    with pytest.raises(AttributeError, match="no attribute 'ReplayServr'"):
        _ = replay.ReplayServr
