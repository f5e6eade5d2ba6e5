"""Examples -> token ids, the same way for training, held-out scoring and serving.

Chat models: the turns go through the model's chat template with a generation prompt
(what :class:`node.expert.serve.prompts.PromptBuilder` does for ``messages``), then the target
and the end-of-turn token.  Base models without a template (Gemma 270M): the turns'
contents joined by blank lines, sent as a raw prompt.  The loss covers only the target.
"""

from __future__ import annotations

from typing import Any

from .data import Example

IGNORE = -100  # label value torch's cross-entropy skips


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, messages: tuple[tuple[str, str], ...]) -> str:
    if has_chat_template(tokenizer):
        turns = [{"role": role, "content": content} for role, content in messages]
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(content for _, content in messages) + "\n"


def prompt_ids(tokenizer: Any, messages: tuple[tuple[str, str], ...]) -> list[int]:
    text = render_prompt(tokenizer, messages)
    return list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])


def encode(tokenizer: Any, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``; an over-long prompt loses its *start* so the target always fits."""
    prompt = prompt_ids(tokenizer, example.messages)
    target = list(tokenizer(example.target, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        target.append(int(tokenizer.eos_token_id))
    target = target[: max(1, max_length // 2)]
    room = max_length - len(target)
    prompt = prompt[-room:] if room > 0 else []
    return prompt + target, [IGNORE] * len(prompt) + target


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded batch tensors (training only; generation pads left)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
