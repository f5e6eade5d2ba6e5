"""Held-out scoring before and after training: accuracy of greedy replies, and target loss.

Task-file examples are scored by :func:`node.evaluation.score` (the benchmark's rules);
other examples count as correct when the normalized reply equals the normalized target
(:func:`node.evaluation.normalize`).  The mean per-token loss of the targets is reported
too: on a 135M model accuracy often stays near zero while the loss shows learning.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .data import Example
from .tokens import IGNORE, collate, encode, prompt_ids

# Replies long enough for the answer form each task type asks for.
DEFAULT_MAX_TOKENS = {"multiple_choice": 16, "exact_match": 64, "f1_match": 32}


@dataclass(frozen=True)
class HeldoutScore:
    n: int
    accuracy: float
    loss: float

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "accuracy": round(self.accuracy, 4), "loss": round(self.loss, 4)}


def max_tokens_for(examples: tuple[Example, ...], tokenizer: Any, task_type: str | None) -> int:
    if task_type in DEFAULT_MAX_TOKENS:
        return DEFAULT_MAX_TOKENS[task_type]
    longest = max((len(tokenizer(e.target, add_special_tokens=False)["input_ids"]) for e in examples), default=16)
    return min(256, longest + 8)


def is_correct(example: Example, reply: str) -> bool:
    from node.evaluation import normalize, score

    if example.item is not None:
        return bool(score(example.item, reply).correct)
    return normalize(reply) == normalize(example.target)


def generate_replies(model: Any, tokenizer: Any, examples: tuple[Example, ...], max_new_tokens: int,
                     *, batch_size: int = 8) -> list[str]:
    """Greedy replies, left-padded batches (the base model's replies when LoRA is disabled by the caller)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    replies: list[str] = []
    for start in range(0, len(examples), batch_size):
        rows = [prompt_ids(tokenizer, e.messages) for e in examples[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=int(pad))
        replies.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in out)
    return replies


def target_loss(model: Any, tokenizer: Any, examples: tuple[Example, ...], max_length: int) -> float:
    """Mean per-token cross-entropy of the targets (token-weighted over all examples)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, tokens = 0.0, 0
    for start in range(0, len(examples), 8):
        batch = collate([encode(tokenizer, e, max_length) for e in examples[start : start + 8]], int(pad))
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=IGNORE, reduction="sum")
        total += float(losses)
        tokens += int((labels != IGNORE).sum())
    return total / max(1, tokens)


def score_heldout(model: Any, tokenizer: Any, examples: tuple[Example, ...], *, max_new_tokens: int,
                  max_length: int, lora: bool = True) -> HeldoutScore:
    """Score ``examples``; ``lora=False`` disables the adapter (the base model's score)."""
    if not examples:
        return HeldoutScore(0, 0.0, 0.0)
    context = contextlib.nullcontext() if lora or not hasattr(model, "disable_adapter") else model.disable_adapter()
    model.eval()
    with context:
        replies = generate_replies(model, tokenizer, examples, max_new_tokens)
        loss = target_loss(model, tokenizer, examples, max_length)
    correct = sum(is_correct(e, r) for e, r in zip(examples, replies, strict=True))
    return HeldoutScore(len(examples), correct / len(examples), loss)
