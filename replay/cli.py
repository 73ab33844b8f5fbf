"""The ``uniroute replay-server`` command: serve a dataset's recorded answers over OpenAI's HTTP API."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from profiling.cli import DATA_DIR_ENV, DEFAULT_DATA_DIR, CommandError, default_data_dir

if TYPE_CHECKING:
    from replay.faults import ReplayConfig

# Only the standard library at module level (profiling.cli is the same): `uniroute --help` builds every parser,
# and the server pulls in FastAPI, uvicorn and Polars (seconds). The command imports what it runs.

#: The values of ``replay.faults.FaultKind``, spelled out for --help without importing the server
#: (a test keeps the two equal); ``--fault`` itself is checked against the enum.
FAULT_KINDS = (
    "rate_limited",
    "server_error",
    "unavailable",
    "hang",
    "truncated",
    "mid_stream_drop",
    "malformed_usage",
    "malformed_body",
)


def _key_value(text: str, flag: str) -> tuple[str, float]:
    """Parse ``KEY=NUMBER`` (e.g. ``--model-latency gpt-4o=120``)."""
    key, sep, value = text.rpartition("=")
    try:
        if not (sep and key):
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: expected KEY=NUMBER, got {text!r}") from None


def _model_latency(text: str) -> tuple[str, float]:
    return _key_value(text, "--model-latency")


def _fault(text: str) -> tuple[str, float]:
    from replay.faults import FaultKind

    kind, rate = _key_value(text, "--fault")
    if kind not in set(FaultKind):
        raise argparse.ArgumentTypeError(f"--fault: unknown kind {kind!r}; one of {[k.value for k in FaultKind]}")
    return kind, rate


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``replay-server`` to ``commands``."""
    replay = commands.add_parser(
        "replay-server",
        help="serve recorded answers as an OpenAI-compatible endpoint",
        description="Serve a dataset's recorded answers at /v1/chat/completions and /v1/models, with latency and "
        "seeded faults; request counts at /_replay/stats and /_replay/requests; substitution rules (a model "
        "silently serving another's answers for one category) at /_replay/substitutions; optionally a judge for "
        "the llm_judge grader. Prompts are rendered by the dataset's adapter, so a request is answered when its "
        "last user message is one of them.",
    )
    replay.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"a prompt file, or a dataset directory (e.g. the mmlu_pro layout); default ${DATA_DIR_ENV} or "
        f"{DEFAULT_DATA_DIR}",
    )
    replay.add_argument("--adapter", default=None, help="the data's layout (default: detected)")
    replay.add_argument("--dataset", default=None, help="its dataset name (default: the adapter's or file's)")
    replay.add_argument(
        "--responses", type=Path, default=None, help="recorded answers (model, prompt_id, response) if not in --data"
    )
    replay.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    replay.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    replay.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer (default 0)")
    replay.add_argument(
        "--model-latency",
        type=_model_latency,
        action="append",
        default=[],
        metavar="MODEL=MS",
        help="per-model latency override; repeatable",
    )
    replay.add_argument(
        "--fault-rate", type=float, default=0.0, help="probability of a fault, spread evenly over the kinds"
    )
    replay.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"rate of one fault kind, overriding its share of --fault-rate; kinds: {', '.join(FAULT_KINDS)}",
    )
    replay.add_argument("--seed", type=int, default=0, help="seed of the fault draws (default 0)")
    replay.add_argument(
        "--hang-seconds", type=float, default=30.0, help="how long a hang lasts; above the client timeout"
    )
    replay.add_argument("--retry-after", type=int, default=1, help="Retry-After of a 429, in seconds")
    replay.add_argument(
        "--substitute",
        nargs=3,
        action="append",
        default=[],
        metavar=("MODEL", "CATEGORY", "SERVED_BY"),
        help="MODEL answers prompts of CATEGORY with SERVED_BY's recorded answers (silently: the response still "
        "names MODEL); repeatable; changed while serving at /_replay/substitutions",
    )
    replay.add_argument(
        "--judge-model",
        default=None,
        metavar="NAME",
        help="also serve a judge under NAME (e.g. replay-judge) that answers the llm_judge grader's requests with "
        "the verdict of each prompt's own grader against its reference",
    )
    replay.add_argument(
        "--judge-rubric", type=Path, default=None, help="a file holding the llm_judge rubric (default: its default)"
    )
    replay.add_argument("--judge-noise", type=float, default=0.0, help="share of judge verdicts flipped (default 0)")
    replay.add_argument("--judge-seed", type=int, default=0, help="seed of the judge's noise (default 0)")
    replay.set_defaults(run=run_replay_server)


def replay_config(args: argparse.Namespace) -> ReplayConfig:
    """The :class:`~replay.faults.ReplayConfig` of parsed ``replay-server`` arguments; ``ValueError`` naming the
    first bad one."""
    from replay.faults import FaultRates, ReplayConfig
    from replay.judge import JudgeConfig
    from replay.substitution import Substitution

    judge = None
    if args.judge_model is not None:
        rubric = {}
        if args.judge_rubric is not None:
            if not args.judge_rubric.is_file():
                raise ValueError(f"--judge-rubric: {args.judge_rubric} not found")
            rubric = {"rubric": args.judge_rubric.read_text(encoding="utf-8")}
        judge = JudgeConfig(model=args.judge_model, noise=args.judge_noise, seed=args.judge_seed, **rubric)
    faults = FaultRates(**{**vars(FaultRates.spread(args.fault_rate)), **dict(args.fault)})
    return ReplayConfig(
        latency_ms=args.latency_ms,
        model_latency_ms=dict(args.model_latency),
        faults=faults,
        seed=args.seed,
        hang_seconds=args.hang_seconds,
        retry_after_seconds=args.retry_after,
        substitutions=tuple(Substitution(*rule) for rule in args.substitute),
        judge=judge,
    )


def run_replay_server(args: argparse.Namespace) -> int:
    """Load the dataset, then serve until interrupted (SIGINT/SIGTERM)."""
    import uvicorn

    from replay.app import create_app
    from replay.data import ReplayData
    from replay.server import UVICORN_SETTINGS

    data_dir: Path = args.data or default_data_dir()
    if not data_dir.exists():
        raise CommandError(f"no data at {data_dir}; pass --data PATH or set {DATA_DIR_ENV}")
    try:
        config = replay_config(args)
        started = time.perf_counter()
        data = ReplayData.from_dataset(data_dir, args.adapter, args.dataset, args.responses)
        app = create_app(data, config)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"replay-server: {data.n_responses} responses of {len(data.models)} models to {data.n_prompts} prompts "
        f"from {data_dir} loaded in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        **UVICORN_SETTINGS,
        log_level="info",
        timeout_graceful_shutdown=3,  # then cancel requests still hanging
    )
    return 0
