"""UniRoute as LiteLLM's routing: ask UniRoute's ``POST /v1/route`` which LLM should answer a request and keep
LiteLLM's deployments of that LLM (then of the next ranked one), leaving keys, retries and fallbacks to LiteLLM.

Python Router::

    import litellm
    from litellm_uniroute import UniRouteRouting

    litellm.callbacks = [UniRouteRouting("http://127.0.0.1:8000", api_key="...", model_groups=["uniroute"])]

Proxy ``config.yaml``: ``litellm_settings: {callbacks: ["litellm_uniroute.proxy.handler"]}`` with the
``UNIROUTE_*`` variables (:meth:`UniRouteRouting.from_env`).
"""

from litellm_uniroute.routing import (
    ROUTING_FIELDS,
    RouteError,
    UniRouteRouting,
    deployment_llms,
    deployments_of_best,
)

__all__ = ["ROUTING_FIELDS", "RouteError", "UniRouteRouting", "deployment_llms", "deployments_of_best"]
