"""Shared fixtures: synthetic routing data where the right answer is known, and a tiny MMLU-Pro-like dataset."""

from __future__ import annotations

import os

# Telemetry off for every library the tests import (set before any of them is imported).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")

import contextlib
import json
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The embedder's int8 ONNX export, made once and kept (a cache under the git-ignored data directory); the pipeline's
# EmbedderResource and the processes the tests start read it from here too.
os.environ.setdefault("UNIROUTE_EMBEDDER_CACHE", str(PROJECT_ROOT / "data" / "embedders"))


@pytest.fixture(scope="session")
def onnx_cache() -> Path:
    """Where the default embedder's ONNX export is kept across tests (``$UNIROUTE_EMBEDDER_CACHE``)."""
    return Path(os.environ["UNIROUTE_EMBEDDER_CACHE"])


def alias_bomb(tail: str) -> str:
    """The classic YAML "billion laughs" (9 levels of 9 aliases: 9**9 strings once expanded, under 1 KB), then
    ``tail``, which may refer to its top level as ``*i``."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, level in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{level}: &{level} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n" + tail


STALE_BY_PARTITION_QUERY = """
query ($key: AssetKeyInput!, $partitions: [String!]!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { staleStatusByPartition(partitions: $partitions) } }
}
"""


def ui_stale_statuses(workspace, asset: str, partitions: list[str]) -> dict[str, str]:
    """What the Dagster UI shows for each of ``asset``'s ``partitions`` (FRESH, STALE: "Unsynced", MISSING), from
    its GraphQL API on ``workspace`` (``pipelines.ticks.daemon_workspace``), as the webserver serves a request."""
    from dagster_graphql.test.utils import execute_dagster_graphql

    variables = {"key": {"path": [asset]}, "partitions": partitions}
    with workspace.create_request_context() as context:
        node = execute_dagster_graphql(context, STALE_BY_PARTITION_QUERY, variables).data["assetNodeOrError"]
    return dict(zip(partitions, node["staleStatusByPartition"], strict=True))


def store_rated_traffic(
    path: Path,
    decisions: list[dict] | None = None,
    ratings: dict[str, float] | None = None,
    verdicts: dict[str, float] | None = None,
    at=None,
) -> None:
    """Write routed requests and their outcomes into the warehouse at ``path``, as the gateway's logs and the judge
    would: ``decisions`` (``serving.decisions.SCHEMA`` columns; ``at`` defaults to ``at``, ``status`` 200,
    ``budget_kind`` "none"; one already stored is kept), ``ratings`` (request id: score, as feedback rated at
    ``at``: a newer rating of a request stands) and ``verdicts`` (request id: the judge's score). ``at``: aware UTC,
    default now."""
    from datetime import UTC, datetime
    from uuid import uuid4

    import warehouse as wh
    from serving.decisions import SCHEMA

    at = at or datetime.now(UTC)
    rows = [{"at": at, "status": 200, "budget_kind": "none", **row} for row in decisions or []]
    ratings, verdicts = ratings or {}, verdicts or {}
    feedback = {"feedback_id": [uuid4().hex for _ in ratings], "request_id": list(ratings)}
    judged = {"request_id": list(verdicts), "score": list(verdicts.values())}
    with wh.connect(path) as con:
        if rows:
            wh.insert_routing_decisions(con, pl.DataFrame(rows, schema=SCHEMA))
        if ratings:
            feedback |= {"score": list(ratings.values()), "at": at, "source": "api"}
            wh.insert_traffic_feedback(con, pl.DataFrame(feedback))
        if verdicts:
            judged |= {"judge": "judge", "grader_version": "1", "judged_by": "judge@judge", "cost_usd": 0.0}
            wh.insert_traffic_judgements(con, pl.DataFrame(judged).with_columns(cached=False))


def corrupt_warehouse(path: Path) -> bytes:
    """Make a real warehouse at ``path`` holding a few MB of embeddings, then overwrite bytes in the middle of a
    stored block of them, as a bad disk sector would; returns the damaged file's bytes."""
    import warehouse as wh

    with wh.connect(path) as con:
        con.execute(
            "INSERT INTO embeddings SELECT 'e', md5(range::VARCHAR), [random()::FLOAT FOR x IN range(64)] "
            "FROM range(20000)"
        )
        con.execute("CHECKPOINT")
        blocks = [
            row[0]
            for row in con.execute(
                "SELECT DISTINCT block_id FROM pragma_storage_info('embeddings') WHERE persistent AND block_id >= 0 "
                "ORDER BY block_id"
            ).fetchall()
        ]
        block_size = con.execute("PRAGMA database_size").fetchall()[0][2]
    header = 3 * 4096  # DuckDB's file header and its two database headers come first
    data = bytearray(path.read_bytes())
    at = header + blocks[len(blocks) // 2] * block_size + 4096
    assert len(blocks) > 4 and at < len(data) - 4096
    data[at : at + 64] = bytes(range(64))
    path.write_bytes(data)
    return bytes(data)


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """A real Dagster instance in a temporary DAGSTER_HOME with the project's dagster.yaml."""
    import dagster as dg

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance, _without_defs_state():
        yield instance


@dataclass
class TwoTopics:
    """Two topics as tight clusters of unit vectors; A is right on topic 0, B on topic 1, C (cheap) on half.

    Rows: ``train`` / ``validation`` / ``test`` prompts, each with its topic in ``*_topic``.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    train_topic: np.ndarray
    validation_topic: np.ndarray
    test_topic: np.ndarray
    llms: list[str]
    costs: list[float]

    def errors(self, topic: np.ndarray, llm: str, seed: int = 0) -> np.ndarray:
        """A: wrong on topic 1; B: wrong on topic 0; C: wrong on a random half; D: never wrong."""
        rng = np.random.default_rng(seed)
        return {
            "A": (topic == 1).astype(float),
            "B": (topic == 0).astype(float),
            "C": (rng.uniform(size=topic.shape) < 0.5).astype(float),
            "D": np.zeros(topic.shape),
        }[llm]

    def error_matrix(self, split: str, llms: list[str] | None = None) -> np.ndarray:
        topic = getattr(self, f"{split}_topic")
        return np.column_stack([self.errors(topic, m) for m in (llms or self.llms)])

    def outcomes(self, split: str, llms: list[str] | None = None) -> pl.DataFrame:
        """``model, prompt_id, score`` frame; prompt ids are ``<split>-<row>``."""
        topic = getattr(self, f"{split}_topic")
        ids = [f"{split}-{i}" for i in range(len(topic))]
        return pl.concat(
            pl.DataFrame({"model": m, "prompt_id": ids, "score": 1.0 - self.errors(topic, m)})
            for m in (llms or self.llms)
        )

    def llm_frame(self) -> pl.DataFrame:
        return pl.DataFrame({"model": self.llms, "cost": self.costs})


def _blobs(rng: np.random.Generator, n: int, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    topic = rng.integers(0, len(centers), size=n)
    x = centers[topic] + 0.05 * rng.normal(size=(n, centers.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), topic


@pytest.fixture
def two_topics() -> TwoTopics:
    rng = np.random.default_rng(42)
    centers = np.eye(8)[:2]
    parts = [_blobs(rng, n, centers) for n in (200, 60, 100)]
    return TwoTopics(
        train=parts[0][0],
        validation=parts[1][0],
        test=parts[2][0],
        train_topic=parts[0][1],
        validation_topic=parts[1][1],
        test_topic=parts[2][1],
        llms=["A", "B", "C"],
        costs=[1.0, 1.0, 0.1],
    )


# ---- a tiny dataset in the shared MMLU-Pro layout (no ../shared needed) ----


TOPICS = {
    "math": ["Compute the integral of {a}x from 0 to {b}.", "Solve {a}x + {b} = 0 for x."],
    "history": ["In which year did the treaty of {a} end the war of {b}?", "Which empire ruled {a} in {b} AD?"],
    "biology": ["Which enzyme breaks down {a} in the cells of {b}?", "How many chromosomes does a {a} {b} have?"],
}
# Each model is right on its own topics; "cheap" is right on a third of everything; "last" lacks some answers.
SKILLS = {
    "math-pro": {"math"},
    "history-pro": {"history"},
    "bio-pro": {"biology"},
    "generalist": {"math", "history", "biology"},
    "cheap": set(),
    "last": {"math", "biology"},
}
PRICES = {"math-pro": 1.0, "history-pro": 1.0, "bio-pro": 1.0, "generalist": 4.0, "cheap": 0.1, "last": 0.5}


@pytest.fixture(scope="session")
def mmlu_like_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("mmlu_like")
    rows, responses = [], []
    qid = 0
    for category, templates in TOPICS.items():
        for i in range(40):
            text = templates[i % 2].format(a=rng.integers(2, 99), b=rng.integers(2, 99))
            rows.append(
                {
                    "question_id": qid,
                    "question": text,
                    "options": ["1", "2", "3", "4"],
                    "answer": "A",
                    "category": category,
                    "src": "fixture",
                }
            )
            for model, skills in SKILLS.items():
                if model == "last" and qid % 10 == 0:
                    continue  # not collected: must be dropped, never scored as wrong
                correct = category in skills or (model == "cheap" and qid % 3 == 0)
                responses.append(
                    {
                        "model": model,
                        "question_id": qid,
                        "response": f"The answer is ({'A' if correct else 'B'})." * (1 + i % 3),
                        "pred": "A",
                        "correct": int(correct),
                    }
                )
            qid += 1
    pl.DataFrame(rows).write_parquet(root / "questions.parquet")
    pl.DataFrame(responses).write_parquet(root / "responses.parquet")
    pl.DataFrame(
        {
            "model": list(PRICES),
            "provider_kind": "api",
            "params_b": None,
            "active_params_b": None,
            "usd_per_mtok": list(PRICES.values()),
        }
    ).write_csv(root / "models.csv")
    return root


@pytest.fixture(scope="module")
def prompts(mmlu_like_dir: Path) -> dict[int, str]:
    """question_id -> the rendered prompt a client sends (of :func:`mmlu_like_dir`'s questions)."""
    from profiling.rendering import render_mmlu_pro

    questions = pl.read_parquet(mmlu_like_dir / "questions.parquet")
    return {q["question_id"]: render_mmlu_pro(q["question"], q["options"], q["category"]) for q in questions.to_dicts()}


@pytest.fixture(scope="module")
def recorded(mmlu_like_dir: Path) -> dict[tuple[str, int], str]:
    """(model, question_id) -> its recorded answer in :func:`mmlu_like_dir`."""
    responses = pl.read_parquet(mmlu_like_dir / "responses.parquet")
    return {(r["model"], r["question_id"]): r["response"] for r in responses.to_dicts()}


def materialise_graph(
    instance,
    resources: dict,
    data_dir: Path | None,
    catalog: Path,
    llms: list[str],
    profile: bool = True,
    prompts: dict | None = None,
) -> dict[str, dict]:
    """The whole graph for ``llms`` (already in ``catalog``): catalog, prompts (``data_dir`` imported, or the
    ``prompt_set`` config ``prompts``), embeddings; each LLM profiled on every split (``profile=False``: already
    done, e.g. by parallel runs); a K-means map (K=3); features; the router. Returns the map's and the router's
    metadata."""
    import dagster as dg

    from assets.embeddings import prompt_embeddings
    from assets.profiling import graded_responses, llm_catalog, llm_partitions, llm_responses, prompt_set
    from assets.router import router
    from assets.routing import cluster_map, llm_error_features

    def run(assets, partition=None, ops=None):
        with _without_defs_state():
            result = dg.materialize(
                assets, partition_key=partition, resources=resources, instance=instance, run_config={"ops": ops or {}}
            )
        assert result.success
        return result

    def meta(result, node):
        return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}

    prompt_config = prompts if prompts is not None else {"path": str(data_dir)}
    setup = {"llm_catalog": {"config": {"path": str(catalog)}}, "prompt_set": {"config": prompt_config}}
    run([llm_catalog, prompt_set, prompt_embeddings], ops=setup)
    instance.add_dynamic_partitions(llm_partitions.name, llms)
    for model in llms if profile else []:
        run(
            [llm_responses, graded_responses],
            model,
            {"llm_responses": {"config": {"splits": ["train", "validation", "test"]}}},
        )
    fitted = run([cluster_map], ops={"cluster_map": {"config": {"kind": "kmeans", "n_clusters": 3}}})
    for model in llms:
        run([llm_error_features], model)
    return {"cluster_map": meta(fitted, "cluster_map"), "router": meta(run([router]), "router")}


@pytest.fixture(scope="session")
def build_graph():
    """:func:`materialise_graph`, for tests of the build itself (their own storage, data or endpoints); tests that only
    need a materialised pipeline take a copy of :func:`pipeline_snapshot` instead."""
    return materialise_graph


# ---- one materialised pipeline per pytest run, copied per test ----


@dataclass(frozen=True)
class DataHome:
    """A materialised pipeline's files under ``root``: Dagster home, DuckDB warehouse (with its staging), fitted
    artifacts, MLflow sqlite registry with its artifacts (``mlflow/``, beside the warehouse as the resources put it)
    and the catalog. Its ``llms`` were profiled at ``base_url``, whose endpoint may be gone: a catalog that keeps
    their URL keeps their answers current (a changed URL makes them stale)."""

    root: Path
    base_url: str
    llms: tuple[str, ...]

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def catalog(self) -> Path:
        return self.root / "llms.yaml"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"

    def env(self) -> dict[str, str]:
        """What the assets and the processes started on this home read: its Dagster home and warehouse (MLflow's
        artifacts go beside the warehouse)."""
        return {"DAGSTER_HOME": str(self.dagster_home), "UNIROUTE_WAREHOUSE": str(self.warehouse)}

    def resources(self, **overrides) -> dict:
        from assets.resources import (
            ArtifactsResource,
            CollectorResource,
            EmbedderResource,
            MlflowResource,
            WarehouseResource,
        )

        return {
            "warehouse": WarehouseResource(path=str(self.warehouse)),
            "collector": CollectorResource(max_attempts=3, timeout_s=5.0),
            "embedder": EmbedderResource(),
            "artifacts": ArtifactsResource(root=str(self.root / "artifacts")),
            "mlflow": MlflowResource(tracking_uri=self.tracking_uri),
            **overrides,
        }

    def write_catalog(self, llms: list[str] | None = None, endpoints: dict[str, str] | None = None) -> Path:
        """The catalog: ``llms`` (default :attr:`llms`) at :attr:`base_url`, then ``endpoints`` (name: URL); all at
        1 USD per million tokens."""
        entries = [f"{{name: {n}}}" for n in (self.llms if llms is None else llms)]
        entries += [f"{{name: {n}, base_url: '{url}'}}" for n, url in (endpoints or {}).items()]
        self.catalog.write_text(
            f"defaults: {{base_url: '{self.base_url}', usd_per_mtok_in: 1, usd_per_mtok_out: 1}}\n"
            f"llms: [{', '.join(entries)}]\n"
        )
        return self.catalog

    def init_dagster_home(self) -> None:
        """An empty Dagster home with the project's dagster.yaml."""
        self.dagster_home.mkdir(parents=True)
        shutil.copy(PROJECT_ROOT / "dagster.yaml", self.dagster_home)

    @contextlib.contextmanager
    def instance(self):
        """The home's Dagster instance (its own dagster.yaml and storage)."""
        import dagster as dg

        with dg.DagsterInstance.from_config(str(self.dagster_home)) as instance, _without_defs_state():
            yield instance

    @staticmethod
    def latest_metadata(instance, asset: str) -> dict:
        """The metadata values of ``asset``'s latest materialisation in ``instance``."""
        import dagster as dg

        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def copy(self, dest: Path) -> DataHome:
        """This home copied to ``dest``, reading and writing nothing of the original: the registry's artifact URIs
        follow the copy (as ``uniroute`` re-roots a moved registry), and the warehouse records its cluster map
        relative to itself."""
        from serving import registry

        shutil.copytree(self.root, dest)
        registry.follow_moved_artifacts(dest / "mlflow" / "mlflow.db")
        return DataHome(dest, self.base_url, self.llms)


def _build_once_per_run(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` run once per pytest run, shared by its xdist workers (session fixtures run once per worker):
    the first worker to arrive builds under the run's temporary root, the others wait on the lock and reuse it. A
    failed build is not retried by the other workers: they fail with its error. Nothing may write to the folder."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common parent
    folder, done, failed = shared / name, shared / f"{name}.done", shared / f"{name}.failed"
    with FileLock(shared / f"{name}.lock"):
        if failed.is_file():
            raise RuntimeError(f"building {name} failed in another worker: {failed.read_text()}")
        if not done.is_file():
            try:
                folder.mkdir()
                build(folder)
            except BaseException as error:
                failed.write_text(repr(error))
                raise
            done.touch()
    return folder


def _copy_mlflow_tables(tmp_path_factory, patch: pytest.MonkeyPatch) -> None:
    """A new sqlite MLflow registry gets a copy of MLflow's tables instead of replaying MLflow's ~70 migrations again
    (3-30 s on these shared 2-core machines, in each of dozens of tests that start a registry). The copy is made
    once per run, when first needed, by MLflow's own ``_initialize_tables`` on an empty file: what MLflow makes (no
    experiment yet: the store adds its Default one on opening it); any other database, or a file that already has
    tables, goes through MLflow unchanged. Only where MLflow is imported already (a process that never imports it
    pays nothing); processes the tests start make theirs the usual way."""
    if "mlflow" not in sys.modules:
        return
    from mlflow.store.db import utils

    if getattr(utils._initialize_tables, "copies_tables", False):
        return
    from mlflow.store.model_registry import sqlalchemy_store as registry_store

    initialize = utils._initialize_tables

    def build(folder: Path) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"sqlite:///{folder / 'mlflow.db'}")
        try:
            initialize(engine)
        finally:
            engine.dispose()

    def initialize_tables(engine) -> None:
        database = engine.url.database
        if engine.url.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
            return initialize(engine)
        if not utils._is_empty_database(engine):
            return initialize(engine)
        template = _build_once_per_run(tmp_path_factory, "mlflow_tables", build) / "mlflow.db"
        engine.dispose()  # the pooled connections to the empty file go; the next one opens the copy
        shutil.copyfile(template, database)

    initialize_tables.copies_tables = True
    patch.setattr(utils, "_initialize_tables", initialize_tables)
    patch.setattr(registry_store, "_initialize_tables", initialize_tables)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_tables_patch(tmp_path_factory):
    """:func:`_copy_mlflow_tables` for the session (the test modules collected imported MLflow), undone at its end."""
    with pytest.MonkeyPatch.context() as patch:
        _copy_mlflow_tables(tmp_path_factory, patch)
        yield patch


@pytest.fixture(autouse=True)
def _mlflow_tables_copied(tmp_path_factory, _mlflow_tables_patch):
    """:func:`_copy_mlflow_tables` once a test has imported MLflow (when no collected module had)."""
    _copy_mlflow_tables(tmp_path_factory, _mlflow_tables_patch)


@pytest.fixture(scope="session")
def litellm_venv() -> Path:
    """LiteLLM's scratch venv for the plug-in's tests, built on first use and kept (``build_litellm_venv``)."""
    from tests.integrations.litellm_support import build_litellm_venv

    return build_litellm_venv()


@pytest.fixture(scope="session")
def build_once_per_run():
    """:func:`_build_once_per_run`, for the conftests of sub-folders."""
    return _build_once_per_run


#: The snapshot's LLMs: a cheap one, a topic specialist and an expensive generalist (routing has room to help).
SNAPSHOT_LLMS = ("cheap", "math-pro", "generalist")


@pytest.fixture(scope="session")
def data_home():
    """:class:`DataHome`, for tests that build a data home of their own (e.g. once per module) to copy per test."""
    return DataHome


@pytest.fixture(scope="session")
def pipeline_snapshot(tmp_path_factory, mmlu_like_dir) -> DataHome:
    """The whole graph materialised once per run (:func:`materialise_graph`: the fixture dataset, SNAPSHOT_LLMS
    profiled on every split against a replay endpoint, a K-means map with K=3, features, router v1 @champion).
    Read only: take a copy (:meth:`DataHome.copy`, or the ``materialised_pipeline`` fixture)."""

    def build(root: Path) -> None:
        from replay import ReplayServer

        with ReplayServer(mmlu_like_dir) as server:
            home = DataHome(root, server.base_url, SNAPSHOT_LLMS)
            home.init_dagster_home()
            home.write_catalog()
            with pytest.MonkeyPatch.context() as patch, home.instance() as instance:
                for key, value in home.env().items():
                    patch.setenv(key, value)
                materialise_graph(instance, home.resources(), mmlu_like_dir, home.catalog, list(home.llms))
        (root / "snapshot.json").write_text(json.dumps({"base_url": home.base_url}))

    root = _build_once_per_run(tmp_path_factory, "pipeline_snapshot", build)
    return DataHome(root, json.loads((root / "snapshot.json").read_text())["base_url"], SNAPSHOT_LLMS)


@pytest.fixture
def materialised_pipeline(pipeline_snapshot, tmp_path, monkeypatch) -> DataHome:
    """This test's own copy of :func:`pipeline_snapshot` under ``tmp_path/data``; ``$DAGSTER_HOME`` and
    ``$UNIROUTE_WAREHOUSE`` point at it."""
    home = pipeline_snapshot.copy(tmp_path / "data")
    for key, value in home.env().items():
        monkeypatch.setenv(key, value)
    return home


# the tiny model's vocabulary: whole words of the test prompts, then letters and digits as WordPiece pieces
WORDS = "what is the of a an to and in derivative who wrote hamlet which best describes polynomial answer x 2 + = ?"
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A sentence-transformers-like directory: a 1-layer BERT of width 32 and its WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = list(dict.fromkeys([*specials, *WORDS.split(), *LETTERS, *(f"##{c}" for c in LETTERS)]))
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(root)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(root)
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return root


@pytest.fixture(scope="session")
def static_cache(tiny_model, tmp_path_factory) -> Path:
    """Where the tiny model's static distillation is kept; distilled once for the session, with no network."""
    cache = tmp_path_factory.mktemp("static")
    with pytest.MonkeyPatch.context() as patch:

        def refuse(*args, **kwargs):
            raise RuntimeError(f"network access attempted: {args!r}")

        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        from router_core import Embedder

        Embedder(str(tiny_model), backend="static", cache_dir=cache).static_dir()
    return cache


def _without_defs_state():
    """No Dagster definitions-state storage while loading definitions (the project has no state-backed
    definitions). An instance entered and never left (a generator abandoned in a reference cycle) is left when the
    garbage collector finalises it, which puts the storage of an instance that is gone back into Dagster's context
    variable; loading then fails with "undefined DagsterInstance weakref" (seen on xdist workers, at random points).
    So collect first (~0.3 s), then clear it."""
    import gc

    from dagster._core.storage.defs_state.base import set_defs_state_storage

    gc.collect()
    return set_defs_state_storage(None)


@pytest.fixture(scope="session")
def without_defs_state():
    """:func:`_without_defs_state`, for test modules."""
    return _without_defs_state


@pytest.fixture(autouse=True)
def _no_dagster_state_from_earlier_tests():
    """Dagster keeps the entered instance's definitions-state storage in a context variable; a test that leaves an
    instance entered (e.g. the in-process daemon workspace) would hand the next test in the same worker a storage
    whose instance is gone ("undefined DagsterInstance weakref"). Each test starts without one."""
    if "dagster" in sys.modules:
        from dagster._core.storage.defs_state.base import _current_storage

        _current_storage.set(None)


@dataclass
class S3Bucket:
    """A fresh bucket on a real S3-compatible server (moto's, on 127.0.0.1); credentials only in the environment."""

    endpoint: str  # host:port
    name: str
    access_key: str
    secret: str

    def url(self, prefix: str) -> str:
        """``s3://<bucket>/<prefix>`` with the options that reach this server (plain HTTP, one region)."""
        return f"s3://{self.name}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def client(self):
        """A client of its own (boto3), not the code under test's."""
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1")

    def list_keys(self, prefix: str = "") -> list[str]:
        """The bucket's file keys under ``prefix``, sorted; not the empty ``.../`` directory markers pyarrow leaves
        where it deleted a directory's last file."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))

    def copy(self, source: str, target: str) -> None:
        """Copy the object ``source`` to ``target`` (as a crash between a move's copy and delete leaves it)."""
        self.client().copy_object(Bucket=self.name, Key=target, CopySource={"Bucket": self.name, "Key": source})


@pytest.fixture(scope="session")
def _s3_server():
    """moto's S3 server on 127.0.0.1 and a free port, for this worker's tests: ``host:port``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(_s3_server, tmp_path, monkeypatch) -> S3Bucket:
    """A new bucket on :func:`_s3_server`, its credentials set in the standard AWS variables (and nothing from this
    machine's own AWS configuration)."""
    import secrets

    bucket = S3Bucket(_s3_server, f"staging-{secrets.token_hex(6)}", "AKIATESTSTAGING", secrets.token_hex(16))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bucket.secret)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket
