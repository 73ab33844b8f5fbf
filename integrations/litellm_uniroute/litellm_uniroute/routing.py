"""UniRoute's choice inside LiteLLM: a callback that narrows a model group's healthy deployments to one LLM.

LiteLLM asks every ``CustomLogger`` in ``litellm.callbacks`` to filter a model group's deployments after its own
health, cooldown and tag filters and before its routing strategy picks one
(``Router.async_callback_filter_deployments``). :class:`UniRouteRouting` asks UniRoute's ``POST /v1/route`` for the
request's messages once, then keeps the deployments of ``chosen_llm``; when none of them is healthy (cooled down
after failures), those of the next LLM in ``ranked``. LiteLLM keeps keys, retries, cooldowns and fallbacks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import httpx
from litellm.integrations.custom_logger import CustomLogger

logger = logging.getLogger("litellm_uniroute")

#: Fields of a chat request that steer UniRoute's choice (its budget fields and the OpenAI ``user``): forwarded to
#: /v1/route when the request carries them.
ROUTING_FIELDS: Final = ("user", "cost_weight", "max_cost_per_query", "min_accuracy")
#: Where UniRoute's answer is noted in the request's metadata (for LiteLLM's loggers and callbacks).
METADATA_KEY: Final = "uniroute"
OnError = Literal["litellm", "raise"]


class RouteError(RuntimeError):
    """/v1/route gave no usable answer (and ``on_error="raise"``)."""


class UniRouteRouting(CustomLogger):
    """Route a LiteLLM model group with UniRoute's ``POST /v1/route``.

    Parameters
    ----------
    base_url : the UniRoute gateway, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
    api_key : a UniRoute client key, sent as ``Authorization: Bearer``; never logged.
    model_groups : LiteLLM model names (``model_name``) to route; None routes every group.
    llm_field : the ``model_info`` field naming a deployment's LLM in UniRoute; without it a deployment is
        UniRoute's LLM ``litellm_params.model``, with or without its ``provider/`` prefix.
    timeout_s : how long to wait for /v1/route.
    on_error : ``"litellm"`` (default) leaves the choice to LiteLLM's own strategy when /v1/route fails or
        ranks none of the healthy deployments (a warning is logged); ``"raise"`` fails the request instead.

    Examples
    --------
    >>> routing = UniRouteRouting("http://127.0.0.1:8000", model_groups=["uniroute"])
    >>> routing.route_url
    'http://127.0.0.1:8000/v1/route'
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        model_groups: Iterable[str] | None = None,
        llm_field: str = "uniroute_llm",
        timeout_s: float = 5.0,
        on_error: OnError = "litellm",
    ) -> None:
        super().__init__()
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: {base_url!r} is not an http(s) URL")
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s: {timeout_s!r} is not a number of seconds > 0")
        if on_error not in ("litellm", "raise"):
            raise ValueError(f"on_error: {on_error!r} is not one of 'litellm', 'raise'")
        root = base_url.rstrip("/").removesuffix("/v1")
        self.route_url = f"{root}/v1/route"
        self.model_groups = None if model_groups is None else frozenset(model_groups)
        self.llm_field = llm_field
        self.timeout_s = float(timeout_s)
        self.on_error: OnError = on_error
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UniRouteRouting:
        """The routing the ``UNIROUTE_*`` variables describe (the proxy's ``config.yaml`` can only name an instance).

        ``UNIROUTE_BASE_URL`` (required), ``UNIROUTE_API_KEY``, ``UNIROUTE_MODEL_GROUPS`` (comma-separated),
        ``UNIROUTE_LLM_FIELD``, ``UNIROUTE_TIMEOUT_S``, ``UNIROUTE_ON_ERROR``.
        """
        env = os.environ if env is None else env
        if not env.get("UNIROUTE_BASE_URL"):
            raise ValueError("UNIROUTE_BASE_URL: not set; give the UniRoute gateway's URL, e.g. http://127.0.0.1:8000")
        groups = [g.strip() for g in env.get("UNIROUTE_MODEL_GROUPS", "").split(",") if g.strip()]
        timeout = env.get("UNIROUTE_TIMEOUT_S", "5")
        try:
            timeout_s = float(timeout)
        except ValueError:
            raise ValueError(f"UNIROUTE_TIMEOUT_S: {timeout!r} is not a number of seconds > 0") from None
        return cls(
            env["UNIROUTE_BASE_URL"],
            env.get("UNIROUTE_API_KEY") or None,
            model_groups=groups or None,
            llm_field=env.get("UNIROUTE_LLM_FIELD", "uniroute_llm"),
            timeout_s=timeout_s,
            on_error=env.get("UNIROUTE_ON_ERROR", "litellm"),  # type: ignore[arg-type]  # checked in __init__
        )

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list,
        messages: list | None,
        request_kwargs: dict | None = None,
        parent_otel_span: Any = None,
    ) -> list[dict]:
        """``healthy_deployments`` of the best-ranked LLM that has one (LiteLLM's hook; called on every try)."""
        if not healthy_deployments or not messages or (self.model_groups and model not in self.model_groups):
            return healthy_deployments
        try:
            ranked = await self.ranked_llms(messages, request_kwargs)
        except RouteError as exc:
            return self._unrouted(healthy_deployments, str(exc))
        _note(request_kwargs, {"chosen_llm": ranked[0], "ranked": ranked})
        kept = deployments_of_best(healthy_deployments, ranked, self.llm_field)
        if not kept:
            names = sorted({n for d in healthy_deployments for n in deployment_llms(d, self.llm_field)})
            return self._unrouted(healthy_deployments, f"/v1/route ranked {ranked}, healthy deployments are {names}")
        return kept

    async def ranked_llms(self, messages: Sequence[Mapping], request_kwargs: Mapping | None = None) -> list[str]:
        """UniRoute's LLMs for ``messages``, best first: ``chosen_llm``, then the rest of ``ranked[].llm``."""
        body: dict[str, Any] = {"model": "uniroute", "messages": list(messages)}
        body |= {f: request_kwargs[f] for f in ROUTING_FIELDS if request_kwargs and request_kwargs.get(f) is not None}
        try:
            response = await self._client().post(self.route_url, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise RouteError(f"POST {self.route_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise RouteError(f"POST {self.route_url}: HTTP {response.status_code}: {response.text[:200]}")
        return _ranked(response)

    def _client(self) -> httpx.AsyncClient:
        """One pooled client per event loop (an httpx client is bound to the loop that first used it)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [old for old in self._clients if old.is_closed()]:
                del self._clients[old]
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.timeout_s, limits=limits)
        return client

    def _unrouted(self, healthy_deployments: list, why: str) -> list:
        if self.on_error == "raise":
            raise RouteError(why)
        logger.warning("UniRoute did not route this request, LiteLLM's strategy picks: %s", why)
        return healthy_deployments


def deployment_llms(deployment: Mapping, llm_field: str = "uniroute_llm") -> set[str]:
    """The names UniRoute may give ``deployment``'s LLM: ``model_info[llm_field]`` when set, else
    ``litellm_params.model`` with and without its ``provider/`` prefix."""
    named = (deployment.get("model_info") or {}).get(llm_field)
    if named:
        return {str(named)}
    model = str((deployment.get("litellm_params") or {}).get("model", ""))
    return {model, model.split("/", 1)[-1]} - {""}


def deployments_of_best(deployments: Sequence[dict], ranked: Sequence[str], llm_field: str = "uniroute_llm") -> list:
    """The ``deployments`` of the first LLM in ``ranked`` that has any (empty when none has)."""
    for llm in ranked:
        kept = [d for d in deployments if llm in deployment_llms(d, llm_field)]
        if kept:
            return kept
    return []


def _ranked(response: httpx.Response) -> list[str]:
    """``chosen_llm`` then the other ``ranked[].llm`` of a /v1/route answer."""
    try:
        answer = response.json()
        chosen = answer["chosen_llm"]
        rest = [row["llm"] for row in answer.get("ranked") or []]
    except (ValueError, KeyError, TypeError) as exc:
        raise RouteError(f"/v1/route answered without chosen_llm/ranked[].llm: {exc!r}") from None
    if not isinstance(chosen, str) or not chosen:
        raise RouteError(f"/v1/route answered chosen_llm={chosen!r}")
    return [chosen, *[llm for llm in rest if llm != chosen]]


def _note(request_kwargs: dict | None, answer: dict) -> None:
    """Note ``answer`` in the request's own metadata dict (``metadata``, or ``litellm_metadata`` on some routes),
    when it has one: never a new request field, which LiteLLM could forward to the provider."""
    for key in ("metadata", "litellm_metadata"):
        if request_kwargs is not None and isinstance(request_kwargs.get(key), dict):
            request_kwargs[key][METADATA_KEY] = answer
            return
