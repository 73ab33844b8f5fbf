"""Silent degradation: a model answers the prompts of one category with another model's recorded answers.

A :class:`Substitution` ``(model, category, served_by)`` makes requests to ``model`` for prompts of ``category``
(the category the dataset's adapter gave the prompt, as the warehouse stores it) be answered with ``served_by``'s
recorded answer; the response still names ``model``. Rules are set at start (``ReplayConfig.substitutions``,
``uniroute replay-server --substitute MODEL CATEGORY SERVED_BY``) or while serving (``/_replay/substitutions``), and
a prompt ``served_by`` never answered keeps ``model``'s own answer. The request log's ``served_by`` says whose
answer each request got.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from replay.protocol import BadRequest

if TYPE_CHECKING:
    from replay.data import ReplayData

__all__ = ["Substitution", "Substitutions", "parse_substitution", "substituted"]


@dataclass(frozen=True)
class Substitution:
    """``model`` answers prompts of ``category`` with ``served_by``'s recorded answers."""

    model: str
    category: str
    served_by: str

    def check(self, data: ReplayData) -> None:
        """Raise :class:`BadRequest` naming the field and value unless every name is known to ``data``."""
        for name in ("model", "served_by"):
            value = getattr(self, name)
            if value not in data.responses:
                raise BadRequest(f"{name}: unknown model {value!r}; known: {list(data.models)}", name)
        if self.served_by == self.model:
            raise BadRequest(f"served_by: {self.served_by!r} is the model itself", "served_by")
        if self.category not in data.categories.values():
            raise BadRequest(f"category: unknown {self.category!r}; known: {data.known_categories()}", "category")


def parse_substitution(body: Any, require_served_by: bool = True) -> Substitution:
    """A rule from a JSON object ``{"model", "category", "served_by"}`` (``served_by`` may be left out to name a
    rule to clear); :class:`BadRequest` naming the first bad field."""
    if not isinstance(body, dict):
        raise BadRequest(f"request body: expected a JSON object, got {body!r:.80}", None)
    fields = ("model", "category", "served_by") if require_served_by else ("model", "category")
    unknown = sorted(set(body) - {"model", "category", "served_by"})
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field; expected {list(fields)}", unknown[0])
    for name in fields:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{name}: expected a non-empty string, got {value!r:.80}", name)
    return Substitution(body["model"], body["category"], body.get("served_by") or "")


class Substitutions:
    """The rules in force, thread-safe: at most one per (model, category); a new one replaces the old."""

    def __init__(self, data: ReplayData, rules: tuple[Substitution, ...] = ()) -> None:
        self._data = data
        self._initial = rules
        self._rules: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.reset()

    def add(self, rule: Substitution) -> None:
        """Put ``rule`` in force; :class:`BadRequest` when it names an unknown model or category."""
        rule.check(self._data)
        with self._lock:
            self._rules[rule.model, rule.category] = rule.served_by

    def remove(self, model: str, category: str) -> bool:
        """Lift the rule of (``model``, ``category``); False when there was none."""
        with self._lock:
            return self._rules.pop((model, category), None) is not None

    def clear(self) -> int:
        """Lift every rule; return how many there were."""
        with self._lock:
            count = len(self._rules)
            self._rules.clear()
            return count

    def reset(self) -> None:
        """Back to the rules given at start."""
        self.clear()
        for rule in self._initial:
            self.add(rule)

    def served_by(self, model: str, prompt_id: str) -> str | None:
        """Whose answer ``model`` gives to ``prompt_id`` when a rule applies, else None."""
        if not self._rules:  # the hot path without substitutions takes no lock
            return None
        category = self._data.categories.get(prompt_id)
        with self._lock:
            return self._rules.get((model, category)) if category is not None else None

    def answer(self, model: str, prompt_id: str) -> tuple[str, str]:
        """(the answer ``model`` gives to ``prompt_id``, whose recorded answer it is): the substitute's where a rule
        applies and the substitute answered that prompt, else ``model``'s own (which must be recorded)."""
        served_by = self.served_by(model, prompt_id)
        substitute = self._data.responses[served_by].get(prompt_id) if served_by is not None else None
        if substitute is None:
            return self._data.responses[model][prompt_id], model
        return substitute, served_by

    def rows(self) -> list[dict[str, str]]:
        """The rules in force, as ``{model, category, served_by}``, sorted."""
        with self._lock:
            items = sorted(self._rules.items())
        return [asdict(Substitution(model, category, served)) for (model, category), served in items]


def substituted(data: ReplayData, rules: Sequence[Substitution]) -> ReplayData:
    """``data`` with the answers a server under ``rules`` serves (e.g. to grade the true answers after a change)."""
    table = Substitutions(data, tuple(rules))
    responses = {model: {pid: table.answer(model, pid)[0] for pid in own} for model, own in data.responses.items()}
    return dataclasses.replace(data, responses=responses)
