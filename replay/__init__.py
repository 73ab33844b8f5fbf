"""The replay endpoint: a fake OpenAI-compatible LLM service answering with recorded responses, for the demo, the
tests and the benchmarks.

- :mod:`replay.data`: the recorded answers, indexed by prompt text (:class:`ReplayData`), and how they load;
- :mod:`replay.faults`: fault injection (:class:`FaultKind`, :class:`FaultRates`, :class:`ReplayConfig`);
- :mod:`replay.substitution`: silent degradation (:class:`Substitution`: a model serves another's answers for a
  category);
- :mod:`replay.judge`: a judge for the ``llm_judge`` grader that gives the project's own grades (:class:`JudgeConfig`);
- :mod:`replay.app`: the HTTP app (:func:`create_app`) and its :class:`RequestLog`;
- :mod:`replay.server`: :class:`ReplayServer`, the app on a background thread;
- :mod:`replay.cli`: the ``uniroute replay-server`` command.

Names load on first use (``uniroute --help`` imports :mod:`replay.cli` and must not wait for FastAPI or Polars)::

    from replay import ReplayConfig, ReplayServer

    with ReplayServer(data_dir, ReplayConfig(latency_ms=50)) as server:
        httpx.post(f"{server.base_url}/chat/completions", json={"model": ..., "messages": [...]})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replay.app import OK, RejectReason, RequestLog, create_app
    from replay.data import PromptGrading, ReplayData
    from replay.faults import MALFORMED_BODIES, MALFORMED_USAGES, SPREAD_KINDS, FaultKind, FaultRates, ReplayConfig
    from replay.judge import DEFAULT_JUDGE_MODEL, JudgeConfig, ReplayJudge
    from replay.server import UVICORN_SETTINGS, ReplayServer
    from replay.substitution import Substitution, substituted

#: Each public name and the module defining it.
_MODULES = {
    "OK": "replay.app",
    "RejectReason": "replay.app",
    "RequestLog": "replay.app",
    "create_app": "replay.app",
    "PromptGrading": "replay.data",
    "ReplayData": "replay.data",
    "MALFORMED_BODIES": "replay.faults",
    "MALFORMED_USAGES": "replay.faults",
    "SPREAD_KINDS": "replay.faults",
    "FaultKind": "replay.faults",
    "FaultRates": "replay.faults",
    "ReplayConfig": "replay.faults",
    "DEFAULT_JUDGE_MODEL": "replay.judge",
    "JudgeConfig": "replay.judge",
    "ReplayJudge": "replay.judge",
    "Substitution": "replay.substitution",
    "substituted": "replay.substitution",
    "UVICORN_SETTINGS": "replay.server",
    "ReplayServer": "replay.server",
}

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "MALFORMED_BODIES",
    "MALFORMED_USAGES",
    "OK",
    "SPREAD_KINDS",
    "UVICORN_SETTINGS",
    "FaultKind",
    "FaultRates",
    "JudgeConfig",
    "PromptGrading",
    "RejectReason",
    "ReplayConfig",
    "ReplayData",
    "ReplayJudge",
    "ReplayServer",
    "RequestLog",
    "Substitution",
    "create_app",
    "substituted",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'replay' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
