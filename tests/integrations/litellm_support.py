"""What the tests of the LiteLLM plug-in share: LiteLLM's scratch venv (built by the first test that needs it) and
the replay endpoint's request log read per prompt."""

from __future__ import annotations

from pathlib import Path

from benchmarks.litellm_peer import ensure_litellm_venv
from benchmarks.rollout_litellm import LITELLM_ROOT
from replay import ReplayServer

VENV = LITELLM_ROOT / "venv"


def build_litellm_venv() -> Path:
    """LiteLLM's scratch venv (:data:`VENV`), built from the package index on first use (pip, ~1 min; then kept, and
    reused by every later run while the pins hold); test files on other workers wait for the one build."""
    ensure_litellm_venv(LITELLM_ROOT)
    return VENV


def asked(replay: ReplayServer) -> dict[int, list[str]]:
    """question_id -> the LLMs the replay endpoint answered for it (in no order); every request answered."""
    found: dict[int, list[str]] = {}
    for row in replay.request_log.rows():
        assert row["outcome"] == "ok", row
        found.setdefault(int(row["prompt_id"].rsplit("/", 1)[1]), []).extend([row["model"]] * row["count"])
    return found
