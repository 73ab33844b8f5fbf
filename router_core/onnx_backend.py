"""ONNX Runtime backend of the embedder: export a sentence-transformers model once, then embed without torch.

The transformer is exported with ``torch.onnx.export`` (TorchScript exporter, opset 17) and quantised with ONNX
Runtime's dynamic quantisation (int8 per-channel weights); unquantised, the export runs no faster than torch on
2 cores. Tokenisation (``tokenizers``), mean pooling over the attention mask and L2 normalisation happen here,
as sentence-transformers does them. sentence-transformers' own ONNX path needs ``optimum-onnx``, which does not
install beside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from router_core._errors import RouterInputError

__all__ = ["OnnxEncoder", "export_onnx"]

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _check_mean_pooling(model_dir: Path) -> None:
    config = model_dir / "1_Pooling" / "config.json"
    if config.is_file():
        pooling = json.loads(config.read_text())
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        if modes != ["pooling_mode_mean_tokens"]:
            raise RouterInputError("backend", "onnx-int8", f"supports mean pooling only; {model_dir} uses {modes}")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:  # the quantiser's module-level ``logging.info`` calls also install a root handler: take it away
        root.setLevel(level)
        root.handlers[:] = handlers


def export_onnx(model_dir: Path, path: Path) -> Path:
    """Export ``model_dir``'s transformer to ``path`` with int8 weights; atomic (a killed export leaves nothing)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    _check_mean_pooling(model_dir)
    # eager attention: its exported graph runs ~1.5x faster in ONNX Runtime than the SDPA one (int8, 2 cores)
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # Two texts of different lengths: the traced graph must take the attention-mask path, not the no-padding one.
    sample = dict(
        tokenizer(["an example prompt", "a longer example prompt, padded less"], padding=True, return_tensors="pt")
    )
    names = [name for name in _INPUTS if name in sample]

    class Transformer(torch.nn.Module):  # positional inputs in, last hidden state out
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter's tracer warnings and the quantiser's advice (logged on the root logger) are not for users
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        fp32 = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                Transformer(),
                args=tuple(sample[name] for name in names),
                f=str(fp32),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "tokens"}},
                opset_version=17,
                dynamo=False,
            )
        int8 = Path(tmp) / "model.int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        int8.replace(path)
    return path


class OnnxEncoder:
    """Embed texts with an exported ONNX transformer: tokenise, run, mean-pool, L2-normalise.

    One text per run: int8 dynamic quantisation scales activations by their range over the whole input, so in a
    batch a text's vector would depend on its neighbours (cosine ~0.99 to its own). Alone it never does, and on
    2 cores batching buys no speed here.

    Parameters
    ----------
    onnx_path : path
        The exported model (see :func:`export_onnx`).
    model_dir : path
        The sentence-transformers directory whose ``tokenizer.json`` matches the export.
    max_seq_length : int
        Truncate texts to this many tokens.
    """

    def __init__(self, onnx_path: Path, model_dir: Path, max_seq_length: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.no_padding()  # tokenizer.json may ask for fixed-length padding; one text needs none
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        # Idle threads sleep rather than spin: spinning burnt the cores that concurrent calls (the gateway's
        # batcher) and the event loop need; measured faster alone too, and the vectors are bit for bit the same.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit vectors, in the order of ``texts``."""
        vectors = []
        for encoding in self.tokenizer.encode_batch(list(texts)):
            feeds = {
                "input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            }
            (hidden,) = self.session.run(None, {name: feeds[name] for name in self.input_names})
            vectors.append(hidden[0].mean(axis=0))  # no padding: the mean over every token is the masked mean
        out = np.stack(vectors)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False)
