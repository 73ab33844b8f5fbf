"""What the traffic loop's benchmark asks of the replay endpoint (issue 25), on a real uvicorn server on 127.0.0.1:
a model silently degraded on one category (substitution rules), and a judge whose verdicts are the project's grades."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from pipelines.cli import build_parser
from pipelines.cli import main as uniroute
from profiling.completion import complete_many
from profiling.graders import GradeContext, GradeItem, InMemoryJudgeCache, get_grader
from replay import JudgeConfig, ReplayConfig, ReplayData, ReplayServer, Substitution, create_app, substituted
from replay.cli import replay_config

JUDGE = "replay-judge"
#: The fixture's categories (tests/conftest.py TOPICS): question ids 0-39 math, 40-79 history, 80-119 biology.
MATH, HISTORY = range(0, 40), range(40, 80)


@pytest.fixture(scope="module")
def replay_data(mmlu_like_dir: Path) -> ReplayData:
    return ReplayData.from_dataset(mmlu_like_dir)


@pytest.fixture(scope="module")
def server(replay_data: ReplayData) -> Iterator[ReplayServer]:
    config = ReplayConfig(judge=JudgeConfig(model=JUDGE))
    with ReplayServer(replay_data, config) as replay:
        yield replay


@pytest.fixture
def client(server: ReplayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/_replay/reset").raise_for_status()
        yield http


def answer(http: httpx.Client, model: str, prompt: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model  # silent: the response names the model asked
    return response.json()["choices"][0]["message"]["content"]


def answers(http: httpx.Client, prompts: dict[int, str]) -> dict[tuple[str, int], str]:
    models = ["generalist", "cheap", "math-pro"]
    return {(m, q): answer(http, m, prompts[q]) for m in models for q in (*MATH[:4], *HISTORY[:4])}


def expected(recorded, swapped: set[int]) -> dict[tuple[str, int], str]:
    """Each model's own answers, except generalist's to ``swapped`` questions: cheap's."""
    models = ["generalist", "cheap", "math-pro"]
    return {
        (m, q): recorded["cheap" if m == "generalist" and q in swapped else m, q]
        for m in models
        for q in (*MATH[:4], *HISTORY[:4])
    }


def assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and all(w in error["message"] for w in words), error
    assert "\n" not in error["message"]


# ---- substitution ----


def test_the_data_knows_each_prompts_category_and_grading(replay_data):
    assert replay_data.known_categories() == ["biology", "history", "math"]
    assert replay_data.categories["mmlu_pro/3"] == "math" and replay_data.categories["mmlu_pro/45"] == "history"
    grading = replay_data.gradings["mmlu_pro/3"]
    assert (grading.grader, grading.reference) == ("mmlu_pro_letter", "A")


def test_a_substitution_at_start_changes_only_that_model_and_category(replay_data, prompts, recorded):
    rules = (Substitution("generalist", "math", "cheap"), Substitution("cheap", "biology", "last"))
    config = ReplayConfig(substitutions=rules)
    with ReplayServer(replay_data, config) as replay, httpx.Client(base_url=replay.url, timeout=10) as http:
        assert answers(http, prompts) == expected(recorded, set(MATH))
        assert recorded["generalist", 1] != recorded["cheap", 1]  # the fixture tells the two apart
        # "last" never answered question 80: cheap keeps its own answer there
        own_then_last = [recorded["cheap", 80], recorded["last", 81]]
        assert [answer(http, "cheap", prompts[q]) for q in (80, 81)] == own_then_last
        served = {(r["model"], r["prompt_id"]): r["served_by"] for r in http.get("/_replay/requests").json()}
        assert served["generalist", "mmlu_pro/1"] == "cheap" and served["generalist", "mmlu_pro/41"] == "generalist"
        assert served["cheap", "mmlu_pro/1"] == "cheap" and served["cheap", "mmlu_pro/81"] == "last"
        assert served["cheap", "mmlu_pro/80"] == "cheap"
        listed = http.get("/_replay/substitutions").json()["substitutions"]
        assert listed == [dataclasses.asdict(rule) for rule in rules[::-1]]  # sorted
    # the true answers after the change, as data (e.g. to grade them)
    true = substituted(replay_data, rules).responses
    assert {k: true[k[0]][f"mmlu_pro/{k[1]}"] for k in expected(recorded, set())} == expected(recorded, set(MATH))
    assert (true["cheap"]["mmlu_pro/80"], true["cheap"]["mmlu_pro/81"]) == (recorded["cheap", 80], recorded["last", 81])
    assert true["bio-pro"] == replay_data.responses["bio-pro"]


def test_substitutions_are_set_and_cleared_while_serving(client, server, prompts, recorded):
    assert answers(client, prompts) == expected(recorded, set())
    rule = {"model": "generalist", "category": "history", "served_by": "cheap"}
    assert client.post("/_replay/substitutions", json=rule).json() == {"substitutions": [rule]}
    assert answers(client, prompts) == expected(recorded, set(HISTORY))
    log = server.request_log.frame()
    assert set(log.filter(log["served_by"] != log["model"])["prompt_id"]) == {f"mmlu_pro/{q}" for q in HISTORY[:4]}

    one = client.delete("/_replay/substitutions", params={"model": "generalist", "category": "history"})
    assert one.json() == {"substitutions": []}
    assert answers(client, prompts) == expected(recorded, set())

    client.post("/_replay/substitutions", json=rule).raise_for_status()
    client.post("/_replay/substitutions", json={**rule, "category": "math"}).raise_for_status()
    assert answers(client, prompts) == expected(recorded, set(MATH) | set(HISTORY))
    assert client.delete("/_replay/substitutions").json() == {"substitutions": []}
    assert answers(client, prompts) == expected(recorded, set())

    client.post("/_replay/substitutions", json=rule).raise_for_status()
    client.post("/_replay/reset").raise_for_status()  # back to the rules of the start: none
    assert client.get("/_replay/substitutions").json() == {"substitutions": []}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "gpt-17", "category": "math", "served_by": "cheap"}, "model", ["'gpt-17'", "known"]),
        ({"model": "generalist", "category": "math", "served_by": "gpt-17"}, "served_by", ["'gpt-17'"]),
        ({"model": "cheap", "category": "math", "served_by": "cheap"}, "served_by", ["the model itself"]),
        ({"model": "cheap", "category": "chemistry", "served_by": "bio-pro"}, "category", ["'chemistry'", "math"]),
        ({"model": "cheap", "category": "math"}, "served_by", ["non-empty string"]),
        ({"model": "cheap", "category": 3, "served_by": "bio-pro"}, "category", ["3"]),
        ({"model": "cheap", "category": "math", "served_by": "bio-pro", "rate": 1}, "rate", ["unknown field"]),
        (["cheap"], None, ["JSON object"]),
    ],
)
def test_the_admin_route_refuses_bad_rules_naming_the_field(client, body, param, words):
    assert_error(client.post("/_replay/substitutions", json=body), 400, param, *words)
    assert client.get("/_replay/substitutions").json() == {"substitutions": []}


def test_the_admin_route_refuses_bad_json_unknown_rules_and_other_hosts(client, replay_data):
    bad = client.post("/_replay/substitutions", content=b"{")
    assert_error(bad, 400, None, "not valid JSON")
    missing = client.delete("/_replay/substitutions", params={"model": "cheap", "category": "math"})
    assert_error(missing, 404, "category", "no substitution", "'cheap'")
    assert_error(client.delete("/_replay/substitutions", params={"model": "cheap"}), 400, "category")

    rule = {"model": "generalist", "category": "math", "served_by": "cheap"}
    transport = httpx.ASGITransport(create_app(replay_data), client=("10.1.2.3", 5000))

    async def from_elsewhere() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://replay") as http:
            return await http.post("/_replay/substitutions", json=rule), await http.get("/_replay/substitutions")

    refused, listed = asyncio.run(from_elsewhere())
    assert_error(refused, 403, None, "loopback")
    assert listed.json() == {"substitutions": []}


def test_a_bad_rule_at_start_is_refused_naming_it(replay_data):
    with pytest.raises(ValueError, match=r"substitutions: category: unknown 'chemistry'"):
        create_app(replay_data, ReplayConfig(substitutions=(Substitution("cheap", "chemistry", "bio-pro"),)))


# ---- the judge ----


def judge_row(server: ReplayServer) -> dict:
    """The judge as a catalog row, priced like any LLM."""
    return {
        "name": JUDGE,
        "base_url": server.base_url,
        "model_id": JUDGE,
        "api_key_env": None,
        "usd_per_mtok_in": 0.5,
        "usd_per_mtok_out": 0.5,
        "max_concurrency": 8,
        "requests_per_minute": None,
    }


def judged(server: ReplayServer, items: list[GradeItem]) -> list:
    """``llm_judge``'s grades of ``items`` with the replay judge, called as the project calls judges."""
    grader = get_grader("llm_judge", {"judge": JUDGE})
    context = GradeContext(lambda name, requests: complete_many(judge_row(server), requests), InMemoryJudgeCache())
    return grader.grade_items(items, context)


def fixture_items(prompts, recorded) -> list[GradeItem]:
    """Recorded answers (right and wrong) and a few written here, to questions of every category."""
    items = [GradeItem(recorded[m, q], None, prompts[q]) for m in ("cheap", "bio-pro", "last") for q in (1, 3, 51, 99)]
    extra = ["The answer is (B).", "so the answer is (A)", "I cannot tell.", "Answer: A"]
    return items + [GradeItem(text, None, prompts[q]) for text, q in zip(extra, (2, 44, 81, 118), strict=True)]


def test_judge_verdicts_agree_with_the_projects_grader(client, server, prompts, recorded):
    items = fixture_items(prompts, recorded)
    letter = get_grader("mmlu_pro_letter")
    truth = [letter.grade(item.response, "A") for item in items]
    results = judged(server, items)
    assert [r.score for r in results] == truth
    assert 0 < sum(truth) < len(truth)  # both verdicts occur
    assert all(r.judge == f"{JUDGE}@{JUDGE}" and r.judge_cost_usd > 0 for r in results)  # priced like any LLM
    assert {m["id"] for m in client.get("/v1/models").json()["data"]} >= {JUDGE, "cheap"}
    log = server.request_log.frame().filter(model=JUDGE)
    assert log["count"].sum() == len(set(items)) and set(log["outcome"]) == {"ok"}  # the same item is asked once


def test_judge_with_the_openai_sdk_and_a_custom_rubric(replay_data, prompts):
    rubric = "Q: {prompt}\nA: {response}\nOut of {scale}, reply 'Score: n'."
    grader = get_grader("llm_judge", {"judge": JUDGE, "rubric": rubric, "scale": 4})
    with ReplayServer(replay_data, ReplayConfig(judge=JudgeConfig(model=JUDGE, rubric=rubric))) as replay:
        sdk = openai.OpenAI(base_url=replay.base_url, api_key="unused")
        for text, score in (("The answer is (A).", 1.0), ("The answer is (C).", 0.0)):
            request = grader.render(GradeItem(text, None, prompts[7]))
            reply = sdk.chat.completions.create(model=JUDGE, messages=[{"role": "user", "content": request}])
            assert reply.model == JUDGE
            assert grader.parse(reply.choices[0].message.content) == (score, None)


def test_judge_finds_a_prompt_given_as_the_requests_messages(server, prompts, recorded):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompts[46]}]
    items = [GradeItem(recorded[m, 46], None, json.dumps(messages)) for m in ("history-pro", "cheap")]
    assert [r.score for r in judged(server, items)] == [1.0, 0.0]


def test_judge_noise_flips_a_seeded_share_of_verdicts(replay_data, prompts, recorded):
    items = [GradeItem(recorded[m, q], None, prompts[q]) for m in ("cheap", "generalist") for q in range(0, 120, 2)]
    letter = get_grader("mmlu_pro_letter")
    truth = [letter.grade(item.response, "A") for item in items]
    flips = []
    for seed in (1, 1, 2):
        config = ReplayConfig(judge=JudgeConfig(model=JUDGE, noise=0.25, seed=seed))
        with ReplayServer(replay_data, config) as replay:
            flips.append([r.score != t for r, t in zip(judged(replay, items), truth, strict=True)])
    assert flips[0] == flips[1] != flips[2]  # the same seed flips the same verdicts
    assert 0.15 < sum(flips[0]) / len(items) < 0.35


def test_judge_refuses_what_it_cannot_judge(client):
    grader = get_grader("llm_judge", {"judge": JUDGE})
    unknown = grader.render(GradeItem("The answer is (A).", None, "What is the capital of Mars?"))
    for content, status, code in [("Hello judge", 400, "not_a_judge_request"), (unknown, 404, "prompt_not_gradable")]:
        body = {"model": JUDGE, "messages": [{"role": "user", "content": content}]}
        response = client.post("/v1/chat/completions", json=body)
        assert_error(response, status, "messages", JUDGE)
        assert response.json()["error"]["code"] == code
    assert client.get("/_replay/stats").json() == {"not_a_judge_request": 1, "prompt_not_gradable": 1}


def test_a_judge_named_like_a_data_model_is_refused(replay_data):
    with pytest.raises(ValueError, match=r"judge.model: 'cheap' is one of the data's models"):
        create_app(replay_data, ReplayConfig(judge=JudgeConfig(model="cheap")))
    with pytest.raises(ValueError, match=r"judge.noise: 1.5 is not in \[0, 1\]"):
        JudgeConfig(noise=1.5)


# ---- the command line ----


def test_cli_flags_build_the_config(mmlu_like_dir, tmp_path, capsys):
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Q: {prompt}\nA: {response}\nScore:")
    argv = ["replay-server", "--substitute", "generalist", "math", "cheap", "--substitute", "last", "history", "cheap"]
    argv += ["--judge-model", JUDGE, "--judge-noise", "0.1", "--judge-seed", "3", "--judge-rubric", str(rubric)]
    config = replay_config(build_parser().parse_args(argv))
    rules = (Substitution("generalist", "math", "cheap"), Substitution("last", "history", "cheap"))
    assert config.substitutions == rules
    assert config.judge == JudgeConfig(model=JUDGE, rubric=rubric.read_text(), noise=0.1, seed=3)

    bad = ["replay-server", "--data", str(mmlu_like_dir), "--substitute", "cheap", "physics", "bio-pro"]
    assert uniroute(bad) == 2
    assert "category: unknown 'physics'" in capsys.readouterr().err
    assert uniroute([*bad[:3], "--judge-model", "x", "--judge-noise", "2"]) == 2
    assert "judge.noise: 2.0 is not in [0, 1]" in capsys.readouterr().err
