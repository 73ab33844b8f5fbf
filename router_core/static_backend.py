"""Static backend of the embedder: a model2vec model distilled locally from a sentence-transformers model.

Distillation (``model2vec.distill``, once: 10-100 s for all-MiniLM-L6-v2's 29,525 tokens on 2 cores, depending on
what else runs) passes every token of the vocabulary alone through the transformer, reduces the token vectors by
PCA and weights them by estimated frequency (SIF). A prompt's vector is then the mean of its tokens' vectors,
L2-normalised: no transformer at embedding time, ~3,800 prompts/s on MMLU-Pro, ~50x the int8 ONNX backend
(``python -m benchmarks.embedders``). Nothing is downloaded: the transformer comes from the local model directory.
model2vec is installed without its ``distill`` extra (whose ``transformers<5.4`` pin fights ours); its distill path
runs with our transformers and torch. Loading and embedding need model2vec alone (no torch, no skeletoken).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["STATIC_RECIPE", "StaticEncoder", "distill_static", "static_dim"]

logger = logging.getLogger(__name__)

#: How the static model is distilled (``model2vec.distill`` arguments); its hash is part of the model's cache key
#: and of ``embedder_id``, so changing it never mixes vectors. These are model2vec's defaults: 256 PCA dimensions,
#: SIF weighting 1e-4, float16 token vectors (averaged in float32).
STATIC_RECIPE: dict[str, object] = {"pca_dims": 256, "sif_coefficient": 1e-4, "quantize_to": "float16"}


def static_dim(model_dir: Path, recipe: dict[str, object] = STATIC_RECIPE) -> int:
    """Length of the distilled model's vectors, known before distilling: the PCA dimensions, at most the model's."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    pca = recipe["pca_dims"]
    if pca is None or pca == "auto" or int(pca) >= vocab:  # model2vec skips PCA when it has fewer tokens than dims
        return hidden
    return min(int(pca), hidden)


def distill_static(model_dir: Path, path: Path, recipe: dict[str, object] = STATIC_RECIPE) -> Path:
    """Distil ``model_dir`` into a model2vec directory at ``path``; atomic (a killed run leaves nothing behind).

    Runs on CPU, whatever accelerator there is, so the same model gives the same vectors everywhere. model2vec
    shows a progress bar over the vocabulary.
    """
    import torch
    from model2vec.distill import distill

    started = time.perf_counter()
    logger.info("distilling a static embedder from %s into %s (once; up to ~2 min on 2 cores)", model_dir, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}-", dir=path.parent) as tmp:
        with torch.inference_mode():
            model = distill(model_name=str(model_dir), device="cpu", **recipe)
        staged = Path(tmp) / "model"
        model.save_pretrained(staged)
        try:
            staged.rename(path)
        except OSError:  # another process distilled it meanwhile: keep theirs
            if not StaticEncoder.is_model_dir(path):
                raise
    logger.info("distilled %s in %.0f s", path.name, time.perf_counter() - started)
    return path


class StaticEncoder:
    """Embed texts with a distilled static model: tokenise, average the tokens' vectors, L2-normalise.

    Each text is averaged on its own, in float32, so its vector never depends on the texts embedded with it.

    Parameters
    ----------
    path : path
        A model2vec directory (see :func:`distill_static`).
    max_seq_length : int
        Average at most this many tokens of a text (a static model adds no special tokens).
    """

    def __init__(self, path: Path, max_seq_length: int) -> None:
        from model2vec import StaticModel

        model = StaticModel.from_pretrained(path, normalize=True, force_download=False)  # a local path: no hub
        model.tokenizer.enable_truncation(max_seq_length)  # what ``model.tokenize`` keeps
        self.model = model
        self.vectors = np.ascontiguousarray(model.embedding, dtype=np.float32)
        self.weights = None if model.weights is None else np.asarray(model.weights, dtype=np.float32)
        self.mapping = model.token_mapping
        # A text with no known token (only characters the vocabulary lacks) gets the unknown token's vector, as the
        # transformer backends give it one; model2vec would leave it all zeros.
        unk = model.unk_token_id
        self._fallback = self._mean([unk]) if unk is not None and unk < len(self.vectors) else None

    @staticmethod
    def is_model_dir(path: Path) -> bool:
        """Whether ``path`` holds a saved static model."""
        return all((path / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _mean(self, ids: Sequence[int]) -> np.ndarray:
        rows = self.vectors[ids if self.mapping is None else self.mapping[ids]]
        if self.weights is not None:
            rows = rows * self.weights[ids][:, None]
        return rows.mean(axis=0)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit vectors, in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.model.tokenize(list(texts))):
            if ids:
                out[i] = self._mean(ids)
            elif self._fallback is not None:
                out[i] = self._fallback
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
