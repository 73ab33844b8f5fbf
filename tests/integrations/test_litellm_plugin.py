"""The LiteLLM plug-in (integrations/litellm_uniroute) in a real LiteLLM proxy from the benchmark's scratch venv.

The proxy serves one model group with a deployment per LLM on the replay endpoint (a real server on 127.0.0.1); the
plug-in asks a real HTTP stand-in of the gateway's ``POST /v1/route`` (tests/integrations/route_stand_in.py, the
contract's shape, a choice that depends on the prompt); requests go through the official ``openai`` SDK; the replay
endpoint's request log says which LLM was asked for each prompt.

LiteLLM pins other versions of our dependencies, so it lives in its own venv (``benchmarks.litellm_peer``), built
from the package index by the first test that needs it (~1 min) and kept for later runs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from benchmarks.litellm_peer import MASTER_KEY, PROXY_ENV, litellm_proxy
from benchmarks.rollout_litellm import GROUP, ensure_uniroute_plugin, plugin_env, routed_config
from replay import ReplayServer
from serving.processes import free_port
from tests.integrations.litellm_support import VENV, asked
from tests.integrations.route_stand_in import RouteStandIn, hashed_ranking

KEY = "uniroute-client-key-0123456789"
#: LLMs with a deployment on the replay endpoint, by UniRoute's name: bio-pro's deployment names it in
#: ``model_info.uniroute_llm``; "dead" is deployed on a port where nothing listens.
UNIROUTE_NAMES = {"math-pro": "math-pro", "history-pro": "history-pro", "biology-llm": "bio-pro", "dead": "dead"}
QUESTIONS = range(1, 60, 2)  # prompts of the fixture dataset (none of them missing an answer)

pytestmark = pytest.mark.usefixtures("litellm_venv")  # built on first use


@pytest.fixture(scope="module")
def replay(mmlu_like_dir: Path) -> Iterator[ReplayServer]:
    with ReplayServer(mmlu_like_dir) as server:
        yield server


@pytest.fixture(scope="module")
def stand_in() -> Iterator[RouteStandIn]:
    with RouteStandIn(hashed_ranking(list(UNIROUTE_NAMES)), KEY) as server:
        yield server


@pytest.fixture(scope="module")
def proxy_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("litellm") / "proxy.log"


@pytest.fixture(scope="module")
def proxy(replay, stand_in, proxy_log) -> Iterator[str]:
    """A LiteLLM proxy routing the group with the plug-in (installed into the scratch venv if missing)."""
    ensure_uniroute_plugin(VENV)
    models = {llm: replay.base_url for llm in UNIROUTE_NAMES.values()}
    models["dead"] = f"http://127.0.0.1:{free_port()}/v1"
    config = routed_config(models, model_info={"bio-pro": {"uniroute_llm": "biology-llm"}})
    config["router_settings"]["allowed_fails"] = 0  # one failure cools a deployment down: the next try moves on
    with litellm_proxy(models, VENV, proxy_log, config=config, env=plugin_env(stand_in.url, KEY)) as url:
        yield url
    assert KEY not in proxy_log.read_text()


@pytest.fixture
def client(proxy, replay, stand_in) -> openai.OpenAI:
    replay.request_log.reset()
    stand_in.bodies.clear()
    stand_in.refused = 0
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=MASTER_KEY, max_retries=0)


def test_each_prompt_reaches_the_llm_route_chose_and_a_dead_choice_falls_back_along_ranked(
    client, replay, stand_in, prompts, recorded
):
    rank = hashed_ranking(list(UNIROUTE_NAMES))
    chosen = {}
    for qid in QUESTIONS:
        response = client.chat.completions.with_raw_response.create(
            model=GROUP, messages=[{"role": "user", "content": prompts[qid]}], user=f"user-{qid}"
        )
        live = [UNIROUTE_NAMES[name] for name in rank(prompts[qid]) if name != "dead"]
        chosen[qid] = live[0]
        assert response.headers["x-litellm-model-id"] == f"deployment-{live[0]}"
        assert response.parse().choices[0].message.content == recorded[live[0], qid]

    assert asked(replay) == {qid: [llm] for qid, llm in chosen.items()}
    assert set(chosen.values()) == {"math-pro", "history-pro", "bio-pro"}  # the choice depends on the prompt
    dead_first = [qid for qid in QUESTIONS if rank(prompts[qid])[0] == "dead"]
    assert dead_first, "no prompt ranked the dead deployment first: the fallback went untested"
    # /v1/route got every prompt with the client key and the OpenAI user field (a retry asks again)
    assert stand_in.refused == 0
    assert {b["messages"][0]["content"] for b in stand_in.bodies} == {prompts[q] for q in QUESTIONS}
    assert all(b["model"] == "uniroute" and b["user"].startswith("user-") for b in stand_in.bodies)
    # a streamed request is routed alike
    replay.request_log.reset()
    qid = QUESTIONS[0]
    stream = client.chat.completions.create(
        model=GROUP, messages=[{"role": "user", "content": prompts[qid]}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert (asked(replay), text) == ({qid: [chosen[qid]]}, recorded[chosen[qid], qid])


def test_when_route_refuses_litellm_still_serves_every_request(
    client, replay, stand_in, prompts, proxy_log, monkeypatch
):
    warned = proxy_log.read_text().count("UniRoute did not route this request")
    monkeypatch.setattr(stand_in, "key", "another-key")  # the gateway no longer knows the plug-in's key
    for qid in QUESTIONS[:6]:
        response = client.chat.completions.with_raw_response.create(
            model=GROUP, messages=[{"role": "user", "content": prompts[qid]}]
        )
        assert response.parse().choices[0].message.content
    assert stand_in.refused >= 6 and not stand_in.bodies
    assert sum(len(llms) for llms in asked(replay).values()) == 6  # served by LiteLLM's own choice
    # each said why in the proxy's log, naming the status and not the key
    warnings = proxy_log.read_text().split("UniRoute did not route this request")[warned + 1 :]
    assert len(warnings) >= 6 and all("HTTP 401" in w.split("\n")[0] for w in warnings)


def test_a_python_router_routes_with_the_plugin_and_bad_settings_are_refused(replay, stand_in, prompts, recorded):
    ensure_uniroute_plugin(VENV)
    replay.request_log.reset()
    stand_in.bodies.clear()
    rank = hashed_ranking(list(UNIROUTE_NAMES))
    questions = [q for q in QUESTIONS if rank(prompts[q])[0] in ("math-pro", "history-pro")][:6]
    args = {
        "route_url": stand_in.url,
        "key": KEY,
        "models": {llm: replay.base_url for llm in ("math-pro", "history-pro")},
        "group": GROUP,
        "prompts": [prompts[q] for q in questions],
    }
    script = Path(__file__).with_name("litellm_router_script.py")
    run = subprocess.run(
        [str(VENV / "bin" / "python"), str(script), json.dumps(args)],
        capture_output=True,
        text=True,
        env=dict(PROXY_ENV),
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    chosen = {q: rank(prompts[q])[0] for q in questions}
    assert result["answered"] == [recorded[chosen[q], q] for q in questions]
    assert asked(replay) == {q: [chosen[q]] for q in questions}
    assert len(stand_in.bodies) == len(questions)  # not for the other group, nor the refused request
    assert result["untouched"] == 1
    assert "HTTP 401" in result["refused"] and "wrong-key" not in result["refused"]
    assert result["errors"] == {
        "base_url": "base_url: '127.0.0.1:8000' is not an http(s) URL",
        "timeout_s": "timeout_s: 0 is not a number of seconds > 0",
        "on_error": "on_error: 'ignore' is not one of 'litellm', 'raise'",
        "env": "UNIROUTE_BASE_URL: not set; give the UniRoute gateway's URL, e.g. http://127.0.0.1:8000",
        "env_timeout": "UNIROUTE_TIMEOUT_S: '1s' is not a number of seconds > 0",
    }
