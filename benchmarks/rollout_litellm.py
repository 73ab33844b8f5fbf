"""UniRoute inside LiteLLM: the plug-in (``integrations/litellm_uniroute``) against LiteLLM's own ``simple-shuffle``.

Two LiteLLM proxies from the scratch venv (``benchmarks.litellm_peer``) serve the same model group, one deployment
per LLM on the replay endpoint: one routes it with ``simple-shuffle``, the other with the plug-in, which asks
UniRoute's ``POST /v1/route``. Measured (:func:`litellm_rollout`):

- the p50 the plug-in adds per request: the same requests one at a time, alternating between the two proxies;
- agreement: each of ``--sample`` distinct prompts sent through the plug-in's proxy and asked of ``/v1/route``
  directly; the LLM the replay endpoint was asked (its request log, per prompt) must be ``/v1/route``'s
  ``chosen_llm`` for 100% of them (the floor).

Run alone it registers a router over the dataset's unseen LLMs and starts ``uniroute serve`` as
``benchmarks.gateway`` does::

    python -m benchmarks.rollout_litellm [--sample 1000] [--latency-requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import httpx
import numpy as np

from benchmarks.litellm_peer import MASTER_KEY, PROXY_ENV, ensure_litellm_venv, litellm_proxy, proxy_config

PLUGIN_DIR: Final = Path(__file__).resolve().parents[1] / "integrations" / "litellm_uniroute"
#: The model group both proxies serve (the name clients ask for).
GROUP: Final = "uniroute"
#: The proxy config's name of the plug-in's instance (``litellm_uniroute/proxy.py``).
PLUGIN_CALLBACK: Final = "litellm_uniroute.proxy.handler"


def ensure_uniroute_plugin(venv_dir: Path) -> None:
    """Install this checkout's plug-in into LiteLLM's scratch venv (editable, ``--no-deps``) unless it is there.

    Only ``venv_dir`` is touched (never the project's venv); pip builds it with setuptools from the package index.
    """
    python = Path(venv_dir) / "bin" / "python"
    probe = "import importlib.util as u; s = u.find_spec('litellm_uniroute'); print(s.origin if s else '')"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    if found and Path(found).resolve().is_relative_to(PLUGIN_DIR.resolve()):
        return
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-input", "--no-deps", "-e", str(PLUGIN_DIR)]
    subprocess.run(pip, check=True, env={**PROXY_ENV, "PATH": "/usr/bin:/bin"})


def routed_config(
    models: Mapping[str, str],
    *,
    plugin: bool = True,
    retries: int = 2,
    model_info: Mapping[str, Mapping] | None = None,
) -> dict:
    """LiteLLM's ``config.yaml``: one deployment per ``llm -> OpenAI base URL`` in the model group :data:`GROUP`.

    ``plugin``: route with the UniRoute plug-in (a callback; configured by ``UNIROUTE_*`` variables), else
    LiteLLM's ``simple-shuffle`` alone. ``model_info``: per LLM, the deployment's ``model_info`` (e.g.
    ``{"uniroute_llm": ...}`` when UniRoute names the LLM otherwise).
    """
    config = copy.deepcopy(proxy_config(models, retries))
    for deployment in config["model_list"]:
        llm = deployment["model_name"]
        deployment["model_name"] = GROUP
        deployment["model_info"] = {"id": f"deployment-{llm}", **(model_info or {}).get(llm, {})}
    if plugin:
        config["litellm_settings"]["callbacks"] = [PLUGIN_CALLBACK]
    return config


def plugin_env(route_base_url: str, key: str | None, **extra: str) -> dict[str, str]:
    """The proxy's ``UNIROUTE_*`` variables for the plug-in: the gateway, its client key, the routed group."""
    env = {"UNIROUTE_BASE_URL": route_base_url, "UNIROUTE_MODEL_GROUPS": GROUP, **extra}
    return env | ({"UNIROUTE_API_KEY": key} if key else {})
