"""Run by LiteLLM's scratch venv's Python (tests/integrations/test_litellm_plugin.py): the plug-in in a Python
``litellm.Router``. Argument: a JSON object (route_url, key, models: llm -> base URL, group, prompts); prints a JSON
object of what happened, for the test to check."""

from __future__ import annotations

import asyncio
import json
import sys

import litellm
from litellm_uniroute import RouteError, UniRouteRouting


def errors() -> dict[str, str]:
    """The one-line refusals of a bad configuration."""
    found = {}
    for name, build in {
        "base_url": lambda: UniRouteRouting("127.0.0.1:8000"),
        "timeout_s": lambda: UniRouteRouting("http://127.0.0.1:8000", timeout_s=0),
        "on_error": lambda: UniRouteRouting("http://127.0.0.1:8000", on_error="ignore"),
        "env": lambda: UniRouteRouting.from_env({}),
        "env_timeout": lambda: UniRouteRouting.from_env({"UNIROUTE_BASE_URL": "http://x", "UNIROUTE_TIMEOUT_S": "1s"}),
    }.items():
        try:
            build()
        except ValueError as exc:
            found[name] = str(exc)
    return found


async def route(args: dict) -> dict:
    model_list = [
        {"model_name": args["group"], "litellm_params": {"model": f"openai/{llm}", "api_base": url, "api_key": "x"}}
        for llm, url in args["models"].items()
    ]
    model_list.append({"model_name": "other", "litellm_params": {"model": "openai/other", "api_base": "http://x"}})
    router = litellm.Router(model_list=model_list, num_retries=0)
    routing = UniRouteRouting(args["route_url"], args["key"], model_groups=[args["group"]])
    litellm.callbacks = [routing]
    answered = []
    for prompt in args["prompts"]:
        response = await router.acompletion(model=args["group"], messages=[{"role": "user", "content": prompt}])
        answered.append(response._hidden_params["model_id"] and response.choices[0].message.content)
    # another group is left alone: LiteLLM's strategy picks its only deployment, /v1/route is not asked
    untouched = await routing.async_filter_deployments("other", model_list[-1:], [{"role": "user", "content": "x"}])
    # a refusing gateway with on_error="raise": the request fails, naming the status, not the key
    litellm.callbacks = [UniRouteRouting(args["route_url"], "wrong-key", on_error="raise")]
    try:
        await router.acompletion(model=args["group"], messages=[{"role": "user", "content": args["prompts"][0]}])
        refused = ""
    except Exception as exc:
        refused = f"{type(exc).__name__}: {exc}"
    return {"answered": answered, "untouched": len(untouched), "refused": refused, "errors": errors()}


if __name__ == "__main__":
    assert RouteError  # exported
    print(json.dumps(asyncio.run(route(json.loads(sys.argv[1])))))
