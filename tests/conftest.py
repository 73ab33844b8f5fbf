"""Shared fixtures: synthetic routing data where the right answer is known, and a tiny MMLU-Pro-like dataset."""

from __future__ import annotations

import os

# Telemetry off for every library the tests import (set before any of them is imported).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")

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
os.environ.setdefault("UNIROUTE_ONNX_CACHE", str(PROJECT_ROOT / "data" / "onnx"))


@pytest.fixture(scope="session")
def onnx_cache() -> Path:
    """Where the default embedder's ONNX export is kept across tests (``$UNIROUTE_ONNX_CACHE``)."""
    return Path(os.environ["UNIROUTE_ONNX_CACHE"])


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
    """:func:`materialise_graph`, for tests that need the whole graph materialised."""
    return materialise_graph


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
    definitions). An instance entered and left out of order elsewhere in the same process can leave the storage of
    an instance that is gone in Dagster's context variable, and loading then fails with "undefined DagsterInstance
    weakref" (seen twice in fresh-clone runs on xdist workers, never in one process)."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    return set_defs_state_storage(None)


@pytest.fixture(autouse=True)
def _no_dagster_state_from_earlier_tests():
    """Dagster keeps the entered instance's definitions-state storage in a context variable; a test that leaves an
    instance entered (e.g. the in-process daemon workspace) would hand the next test in the same worker a storage
    whose instance is gone ("undefined DagsterInstance weakref"). Each test starts without one."""
    if "dagster" in sys.modules:
        from dagster._core.storage.defs_state.base import _current_storage

        _current_storage.set(None)
