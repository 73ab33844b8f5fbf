"""The LiteLLM plug-in against the real gateway: ``uniroute serve`` (its own process, uniroute @champion in a real
MLflow registry) answers the plug-in's ``POST /v1/route`` inside a real LiteLLM proxy (the benchmark's scratch venv);
requests go through the official ``openai`` SDK to LiteLLM, and the replay endpoint's request log shows that each
prompt reached the LLM ``/v1/route`` chose for it."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest

from benchmarks.litellm_peer import MASTER_KEY, litellm_proxy
from benchmarks.rollout_litellm import GROUP, ensure_uniroute_plugin, plugin_env, routed_config
from replay import ReplayServer
from tests.integrations.litellm_support import VENV, asked

from .conftest import gateway_process, write_gateway_catalog

pytestmark = pytest.mark.usefixtures("litellm_venv")  # built on first use
SECRET = "litellm-secret-0123456789abcdef"


def test_litellm_with_the_plugin_asks_the_llm_the_gateway_ranks_first(
    registry_uri, tmp_path, mmlu_like_dir, prices, prompts, recorded
):
    ensure_uniroute_plugin(VENV)
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- {{id: litellm, sha256: {hashlib.sha256(SECRET.encode()).hexdigest()}}}\n")
    questions = list(range(0, 120, 4))
    with ReplayServer(mmlu_like_dir) as replay:
        catalog = tmp_path / "llms.yaml"
        write_gateway_catalog(catalog, replay.base_url, prices)
        with gateway_process(tmp_path, catalog, registry_uri, "--keys-file", str(keys)) as gateway:
            routes = [
                httpx.post(
                    f"{gateway}/v1/route",
                    json={"model": "uniroute", "messages": [{"role": "user", "content": prompts[q]}]},
                    headers={"Authorization": f"Bearer {SECRET}"},
                    timeout=30,
                )
                for q in questions
            ]
            chosen = {q: r.json()["chosen_llm"] for q, r in zip(questions, routes, strict=True)}
            models = dict.fromkeys(prices, replay.base_url)
            env = plugin_env(gateway, SECRET)
            with litellm_proxy(models, VENV, tmp_path / "proxy.log", config=routed_config(models), env=env) as proxy:
                client = openai.OpenAI(base_url=f"{proxy}/v1", api_key=MASTER_KEY, max_retries=0)
                replay.request_log.reset()
                answers = {
                    q: client.chat.completions.create(model=GROUP, messages=[{"role": "user", "content": prompts[q]}])
                    for q in questions
                }
    assert asked(replay) == {q: [chosen[q]] for q in questions}
    assert len(set(chosen.values())) > 1  # the gateway's choice depends on the prompt
    assert {q: a.choices[0].message.content for q, a in answers.items()} == {
        q: recorded[chosen[q], q] for q in questions
    }
    assert SECRET not in (tmp_path / "proxy.log").read_text()
