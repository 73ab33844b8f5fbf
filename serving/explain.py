"""Why a request goes where it goes: the budget that bounds it (the request's, its client key's or the router's
default), the ranking of every candidate with its score terms, and the forms the gateway and the CLI show.

- :func:`resolve_bound`: a client key's policy (``KeyPolicy.budget``) is the default of its requests and their
  bound: a request may ask for a cheaper budget, never a dearer one. Two budgets of one kind compare by value; of
  two kinds, by their expected cost per query on the validation curve of the LLMs routed among. The cheaper one is
  routed on as it is (so the choice is exactly that budget's), and a request's ``min_accuracy`` the key's budget
  cannot buy is refused (400), never quietly lowered.
- :func:`rank`: the gateway's routing of a chat request (``POST /v1/chat/completions`` and ``POST /v1/route`` call
  it alike, so ``/v1/route`` says what a chat request with the same body would be routed to).
- :func:`explanation`: the ``POST /v1/route`` body; :func:`short_form`: what a chat answer keeps of it;
  :func:`format_table`: ``uniroute route --explain``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from router_core import budget_mix
from serving.chat_request import ROUTED_MODEL, ChatRequest, short_repr
from serving.key_policy import ClientError, KeyPolicy

if TYPE_CHECKING:
    import polars as pl

    from router_core.servable import ServableRouter
    from serving.loaded_router import LoadedRouter
    from serving.rollout import Choice

__all__ = [
    "TOP_CLUSTERS",
    "Bound",
    "explanation",
    "format_table",
    "headers",
    "rank",
    "require_routed",
    "resolve_bound",
    "served",
    "short_form",
]

#: How many of the prompt's cluster weights an explanation shows (the largest).
TOP_CLUSTERS = 3


@dataclass(frozen=True)
class Bound:
    """What the choice was bounded by: ``kind`` (one of ``serving.decisions.BUDGET_KINDS``), its ``value`` and
    ``source`` (``"request"``, ``"key"`` or ``"router"``: its default cost weight), and the ``params`` to rank with
    (the winning budget as it is, and the candidates)."""

    kind: str
    value: float | None
    source: str
    params: dict = field(default_factory=dict)
    candidates_source: str = "router"  # who chose the candidates: the request, the key or the router (its pool)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "source": self.source}

    def header(self) -> str:
        """``kind=value (source)``, the ``X-UniRoute-Bounded-By`` header."""
        return self.kind if self.value is None else f"{self.kind}={self.value:g} ({self.source})"


def resolve_bound(
    model: ServableRouter, policy: KeyPolicy | None, asked: tuple[str, float] | None, candidates: list[str]
) -> Bound:
    """The budget to route on among ``candidates`` (on ``model``'s validation curve): the
    request's ``asked`` or ``policy``'s budget, whichever is cheaper (the request's on a tie); neither: the
    router's default cost weight. ``ClientError`` 400 naming the field when the key's budget cannot be met on these
    candidates or refuses the request's ``min_accuracy``."""
    own = policy.budget if policy is not None else None
    params: dict = {"candidates": candidates}
    if own is None and asked is None:
        return Bound("none", None, "router", params)
    if own is None or asked is None:
        kind, value = asked or own
        return Bound(kind, value, "request" if asked else "key", {**params, kind: value})
    if _cheaper(model, candidates, own, asked, policy.key_id):
        if asked[0] == "min_accuracy":
            message = (
                f"min_accuracy={asked[1]:g}: more than key {policy.key_id!r}'s budget buys "
                f"({own[0]}={own[1]:g}) among {candidates}"
            )
            raise ClientError(400, message, "budget_exceeds_key", "min_accuracy")
        return Bound(own[0], own[1], "key", {**params, own[0]: own[1]})
    return Bound(asked[0], asked[1], "request", {**params, asked[0]: asked[1]})


def _cheaper(
    model: ServableRouter, candidates: list[str], own: tuple[str, float], asked: tuple[str, float], key_id: str
) -> bool:
    """Is the key's budget ``own`` strictly cheaper than the request's ``asked``?"""
    if own[0] == asked[0]:  # one kind: by value (a larger cost weight, a smaller budget or accuracy is cheaper)
        return own[1] > asked[1] if own[0] == "cost_weight" else own[1] < asked[1]
    curve = model.operating_points(candidates)
    return _expected_cost(curve, own, f"key {key_id!r}: ") < _expected_cost(curve, asked, "")


def _expected_cost(curve: pl.DataFrame, budget: tuple[str, float], whose: str) -> float:
    """A budget's expected cost per query on a validation deferral curve (``cost_weight, cost, accuracy``)."""
    kind, value = budget
    if kind == "cost_weight":  # the curve's point at the largest weight not above it
        reached = curve.filter(curve["cost_weight"] <= value).sort("cost_weight")
        return float((reached if reached.height else curve.sort("cost_weight").head(1))["cost"][-1])
    try:
        mix = budget_mix(curve, **{"max_cost" if kind == "max_cost_per_query" else "min_accuracy": value})
    except ValueError as exc:
        raise ClientError(400, f"{whose}{exc}", "invalid_value", kind) from None
    return mix.cost


def _candidates(policy: KeyPolicy, chat: ChatRequest, pool: list[str]) -> tuple[list[str], str]:
    """The candidates to route among and who chose them (request, key or router); 403/400 naming ``candidates``."""
    if not pool:
        raise ClientError(503, "no LLM of the router's pool is active and allowed", "no_llm_available", "model")
    candidates = policy.route_pool(pool, chat.candidates)  # 403 for an LLM the key may not use
    unknown = [c for c in candidates if c not in pool]
    if unknown:
        message = f"candidates: {unknown[0]!r} is not an active LLM of the router's pool {pool}"
        raise ClientError(400, message, "invalid_value", "candidates")
    kept = policy.own_candidates(candidates, chat.candidates is not None)
    if chat.candidates is not None:
        return kept, "key" if len(kept) < len(candidates) else "request"
    return kept, "key" if policy.candidates is not None else "router"


async def rank(
    router: LoadedRouter,
    policy: KeyPolicy,
    chat: ChatRequest,
    pool: list[str],
    rank_with: Callable[[dict], Awaitable[dict]] | None = None,
) -> tuple[dict, Bound]:
    """Rank ``pool`` (the LLMs the key can reach) for a routed chat request on ``router``: the ranking
    (``ServableRouter.rank``, or ``rank_with(params)``: the gateway's rollout, which also shadows it) and its
    :class:`Bound`. ``ClientError`` naming the field for a request that cannot be routed (an impossible budget, say)."""
    candidates, chosen_by = _candidates(policy, chat, pool)
    bound = resolve_bound(router.model, policy, chat.budget, candidates)
    try:
        ranked = await (rank_with or partial(router.rank, chat.prompt))(bound.params)
    except ValueError as exc:  # names the field and value (e.g. an impossible budget)
        where = "" if bound.source != "key" else f"key {policy.key_id!r}: "
        param = bound.kind if bound.kind != "none" else "messages"
        raise ClientError(400, f"{where}{exc}", "invalid_value", param) from None
    return ranked, Bound(bound.kind, bound.value, bound.source, bound.params, chosen_by)


def require_routed(chat: ChatRequest) -> None:
    """``ClientError`` 400 naming ``model`` unless the request is routed (``/v1/route`` ranks nothing else)."""
    if not chat.routed:
        message = f"model={short_repr(chat.model)}: /v1/route ranks model={ROUTED_MODEL!r} requests only"
        raise ClientError(400, message, "not_routed", "model")


def served(choice: Choice | None) -> dict:
    """Which alias served and what the shadow chose (:class:`serving.rollout.Choice`; None: the champion alone):
    ``{"served_alias", "shadow"}``, the shadow ``{"version", "llm", "predicted_error", "predicted_cost_usd"}``."""
    shadow = choice and choice.shadowed
    if shadow is None:
        return {"served_alias": choice.alias if choice else "champion", "shadow": None}
    numbers = {"predicted_error": shadow.predicted_error, "predicted_cost_usd": shadow.predicted_cost}
    return {"served_alias": choice.alias, "shadow": {"version": shadow.version, "llm": shadow.llm, **numbers}}


def _number(value: float) -> float | None:
    """``value`` as JSON can hold it: None for an infinite one (a cost weight of inf ranks by cost alone)."""
    return None if math.isinf(value) else float(value)


def _ranked_rows(ranked: Mapping) -> list[dict]:
    """Every candidate, best first, with its score = error term + cost term (cost term = cost weight x cost; both
    None for an infinite cost weight, which ranks by cost alone)."""
    weight = ranked["cost_weight"]
    rows = []
    for position, llm in enumerate(ranked["order"], 1):
        error, cost = ranked["predicted_error"][llm], float(ranked["cost"][llm])
        cost_term = None if math.isinf(weight) else weight * cost
        rows.append(
            {
                "llm": llm,
                "rank": position,
                "predicted_error": error,
                "predicted_cost_usd": cost,
                "score": None if cost_term is None else error + cost_term,
                "error_term": error,
                "cost_term": cost_term,
            }
        )
    return rows


def _top_clusters(weights: list[float] | None) -> list[dict]:
    if not weights:
        return []
    top = sorted(range(len(weights)), key=lambda k: -weights[k])[:TOP_CLUSTERS]
    return [{"cluster": k, "weight": round(weights[k], 6)} for k in top]


def explanation(ranked: Mapping, bound: Bound, router_version: str, served_by: Mapping) -> dict:
    """The ``POST /v1/route`` body of a ranking (see docs/gateways.md)."""
    return {
        "object": "uniroute.route",
        "router_version": router_version,
        "served_alias": served_by.get("served_alias"),
        "embedder_id": ranked.get("embedder_id"),
        "chosen_llm": ranked["order"][0],
        "cost_weight": _number(ranked["cost_weight"]),
        "bounded_by": bound.as_dict(),
        "candidates_source": bound.candidates_source,
        "cluster_weights": _top_clusters(ranked.get("cluster_weights")),
        "ranked": _ranked_rows(ranked),
        "shadow": served_by.get("shadow"),
    }


def short_form(ranked: Mapping | None, bound: Bound | None) -> dict:
    """What a chat answer's ``uniroute`` field adds: the runner-up LLM and the bound (None for a named model)."""
    order = ranked["order"] if ranked else []
    return {
        "runner_up": order[1] if len(order) > 1 else None,
        "bounded_by": bound.as_dict() if bound else None,
    }


def headers(ranked: Mapping | None, bound: Bound | None) -> dict[str, str]:
    """The short form as headers of a routed answer: ``X-UniRoute-Runner-Up`` (when there is one) and
    ``X-UniRoute-Bounded-By`` (``kind=value (source)``, or ``none``)."""
    if bound is None:
        return {}
    runner_up = short_form(ranked, bound)["runner_up"]
    return {"X-UniRoute-Bounded-By": bound.header(), **({"X-UniRoute-Runner-Up": runner_up} if runner_up else {})}


def format_table(explained: Mapping, prompt: str) -> str:
    """``uniroute route --explain``: the choice, the bound and the top clusters, then one row per candidate."""
    bound = explained["bounded_by"]
    weight = explained["cost_weight"]
    clusters = ", ".join(f"{c['cluster']} ({c['weight']:.2f})" for c in explained["cluster_weights"]) or "-"
    lines = [
        f"{explained['chosen_llm']}\t{' '.join(prompt.split())[:60]}",
        f"  router version {explained['router_version']} ({explained['served_alias']}), cost weight "
        f"{'inf (cheapest first)' if weight is None else f'{weight:.4g}'}, bounded by {bound['kind']}"
        + ("" if bound["value"] is None else f"={bound['value']:g}")
        + f" ({bound['source']}); top clusters {clusters}",
        f"  {'rank':>4}  {'llm':<32}{'pred. error':>12}{'cost USD':>12}{'error term':>12}{'cost term':>12}"
        f"{'score':>10}",
    ]
    for row in explained["ranked"]:
        cost_term, score = (f"{v:.6f}" if v is not None else "-" for v in (row["cost_term"], row["score"]))
        lines.append(
            f"  {row['rank']:>4}  {row['llm']:<32}{row['predicted_error']:>12.6f}{row['predicted_cost_usd']:>12.6f}"
            f"{row['error_term']:>12.6f}{cost_term:>12}{score:>10}"
        )
    return "\n".join(lines)
