"""What the tests of the LiteLLM plug-in share: LiteLLM's scratch venv (and the mark that skips without it) and the
replay endpoint's request log read per prompt."""

from __future__ import annotations

import pytest

from benchmarks.rollout_litellm import LITELLM_ROOT
from replay import ReplayServer

VENV = LITELLM_ROOT / "venv"
needs_litellm_venv = pytest.mark.skipif(
    not (VENV / "bin" / "litellm").exists(),
    reason=f"LiteLLM's scratch venv is not built ({VENV}): `make test` builds it (~1 min from the package index)",
)


def asked(replay: ReplayServer) -> dict[int, list[str]]:
    """question_id -> the LLMs the replay endpoint answered for it (in no order); every request answered."""
    found: dict[int, list[str]] = {}
    for row in replay.request_log.rows():
        assert row["outcome"] == "ok", row
        found.setdefault(int(row["prompt_id"].rsplit("/", 1)[1]), []).extend([row["model"]] * row["count"])
    return found
