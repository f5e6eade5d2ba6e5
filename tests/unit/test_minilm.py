"""MiniLM in numpy (semantic routing) against the same model run by transformers and torch."""

from __future__ import annotations

import numpy as np
import pytest

from node.coordinator.minilm import MiniLM, package_dir

TEXTS = [
    "What is the capital of Italy?",
    "math-helper. Arithmetic and algebra. Topics: math, numbers",
    "A general assistant for everyday questions",
    "Ünïcödé, 東京 and emoji 🙂 in one line",
    "word " * 400,  # longer than the 256-token cut
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    root = str(package_dir())
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    model = AutoModel.from_pretrained(root, local_files_only=True, use_safetensors=True).eval()
    with torch.inference_mode():
        batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_numpy_minilm_equals_transformers(reference: np.ndarray) -> None:
    ours = MiniLM(package_dir()).embed(TEXTS)
    assert ours.shape == reference.shape == (len(TEXTS), 384)
    assert np.abs(ours - reference).max() < 1e-4
    # The routing signal itself: cosine similarities of the query to the descriptions.
    assert np.abs(ours[0] @ ours[1:].T - reference[0] @ reference[1:].T).max() < 1e-4


def test_one_text_alone_equals_its_row_in_a_padded_batch() -> None:
    model = MiniLM(package_dir())
    batch = model.embed(TEXTS[:3])
    alone = model.embed([TEXTS[0]])
    assert np.abs(batch[0] - alone[0]).max() < 1e-5
    assert np.allclose(np.linalg.norm(batch, axis=-1), 1.0, atol=1e-5)
