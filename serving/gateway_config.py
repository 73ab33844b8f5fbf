"""The settings of one gateway process (:class:`GatewayConfig`, handed to every worker of ``--workers N`` as JSON
in :data:`CONFIG_ENV`) and the files its workers share: the key ledger and the request-id secret."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import warehouse as wh
from serving.ledger import SqliteLedger
from serving.upstream import DEFAULT_MAX_RESPONSE_BYTES

CONFIG_ENV = "UNIROUTE_GATEWAY_CONFIG"  # the settings, as JSON, of each worker process of ``--workers N``


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway process needs; plain values, so that ``--workers N`` can hand it to each worker."""

    catalog_path: str
    model_uri: str = "models:/uniroute@champion"
    tracking_uri: str | None = None  # None: MLflow's current URI
    keys_file: str | None = None  # hashed client keys (serving.keys); $UNIROUTE_GATEWAY_KEYS adds more
    reload_interval_s: float = 30.0
    embed_batch: int = 32
    max_body_bytes: int = 1_000_000
    max_tokens: int = 16_384
    fallbacks: int = 2  # LLMs tried after the router's choice fails before its first byte
    retries: int = 2  # per LLM, on 429/5xx/timeouts/connection errors
    decisions_dir: str | None = None  # None: <warehouse dir>/decisions
    ledger_path: str | None = None  # keys' spend and rate counters; None: <warehouse dir>/gateway/ledger.sqlite
    max_upstream_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # an upstream answer past it is a failed try (502)
    traffic_sample_rate: float = 0.0  # share of routed requests whose prompt and answer are STORED (0: none)
    traffic_dir: str | None = None  # None: <warehouse dir>/traffic
    feedback_dir: str | None = None  # None: <warehouse dir>/feedback
    shadow: bool = True  # rank every routed request with <name>@challenger too, when it exists (serving.rollout)
    canary_fraction: float = 0.0  # share of routed requests the challenger serves (by key id and user)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GatewayConfig:
        return cls(**json.loads(text))


def ledger_path(config: GatewayConfig) -> Path:
    """The key ledger's file: ``ledger_path``, else ``<warehouse dir>/gateway/ledger.sqlite``."""
    return Path(config.ledger_path) if config.ledger_path else wh.default_path().parent / "gateway" / "ledger.sqlite"


def request_id_secret_path(config: GatewayConfig) -> Path:
    """The secret every worker of this gateway signs request ids with (:class:`serving.feedback.RequestIds`):
    ``request-ids.secret`` beside the key ledger."""
    return ledger_path(config).parent / "request-ids.secret"


def open_ledger(config: GatewayConfig) -> SqliteLedger:
    """The key counters every worker of this gateway shares (and a restart keeps)."""
    return SqliteLedger(ledger_path(config))
