"""Contributor training data: JSONL pairs, JSONL chats, or a benchmark task file, as examples.

Three inputs, one shape (:class:`Example`: chat turns before the answer, the answer):

* JSONL of ``{"input": ..., "output": ...}`` -- a user turn and the reply to learn;
* JSONL of ``{"messages": [{"role", "content"}, ...]}`` -- the last message must be the
  assistant's: it is the target, everything before it is the prompt;
* a task file of ``shared/data/tasks`` (``{"name", "task_type", "dev", "test"}``) with a
  split: prompts are exactly what the evaluator sends (:func:`node.evaluation.build_prompt`)
  and targets are answers in the form the scorer reads (``B) text`` / ``\\box{42}``), so a
  held-out item is scored the same way as in the benchmark.

The digest that goes into the model card is the sha256 of the file's bytes (plus the split
for task files): anyone holding the same file can check what an adapter was trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A contributor's file is read into memory: bound it (a task file is ~4 MB at most).
MAX_DATA_BYTES = 256 * 1024 * 1024
_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """The training data cannot be used; the message names the file, line and problem."""


@dataclass(frozen=True)
class Example:
    messages: tuple[tuple[str, str], ...]  # (role, content) turns before the answer
    target: str  # the assistant reply to learn
    item: Any = None  # the TaskItem when the example comes from a task file (scored by its rules)


@dataclass(frozen=True)
class Dataset:
    examples: tuple[Example, ...]
    sha256: str
    size_bytes: int
    source: str  # file name (no directories: the card must not leak local paths)
    kind: str  # "pairs", "chat" or "task:<name>/<split>"
    task_type: str | None = None

    def describe(self) -> dict[str, object]:
        return {"file": self.source, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "kind": self.kind, "examples": len(self.examples)}


def load_dataset(path: str | Path, *, split: str = "dev") -> Dataset:
    """Read ``path`` (JSONL or task file) into examples; raises :class:`DataError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if size > MAX_DATA_BYTES:
        raise DataError(f"{path}: {size} bytes is over the {MAX_DATA_BYTES} byte limit")
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="strict") if raw else ""
    head = text.lstrip()[:1]
    if head == "{" and _is_task_file(text):
        return _task_dataset(path, raw, split)
    examples = tuple(_jsonl_examples(path, text))
    if not examples:
        raise DataError(f"{path}: no examples")
    kind = "chat" if examples[0].messages and len(examples[0].messages) != 1 else "pairs"
    return Dataset(examples, hashlib.sha256(raw).hexdigest(), size, path.name, kind)


def _is_task_file(text: str) -> bool:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False  # JSONL: several objects, one per line
    return isinstance(data, dict) and "task_type" in data and ("dev" in data or "test" in data)


def _task_dataset(path: Path, raw: bytes, split: str) -> Dataset:
    from node.evaluation import TaskFileError, build_prompt, load_tasks

    try:
        tasks = load_tasks(path)
        items = tasks.items(split)
    except (TaskFileError, KeyError) as exc:
        raise DataError(str(exc)) from None
    examples = tuple(Example((("user", build_prompt(item)),), task_target(item), item) for item in items)
    if not examples:
        raise DataError(f"{path}: split {split!r} has no items")
    digest = hashlib.sha256(raw + b"\0split=" + split.encode()).hexdigest()
    return Dataset(examples, digest, len(raw), path.name, f"task:{tasks.name}/{split}", tasks.task_type)


def task_target(item: Any) -> str:
    """The reply a task item teaches: the letter and its option (the scorer reads the leading
    letter), or the answer boxed as the exact-match instruction asks."""
    if item.task_type == "multiple_choice":
        text = dict(item.choices).get(item.gold, "")
        return f"{item.gold}) {text}".strip()
    return "\\box{" + item.gold + "}"


def _jsonl_examples(path: Path, text: str):
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be an object")
        if "messages" in row:
            yield _chat_example(where, row["messages"])
        elif "input" in row and "output" in row:
            if not isinstance(row["input"], str) or not isinstance(row["output"], str) or not row["output"]:
                raise DataError(f"{where}: 'input' and 'output' must be strings, 'output' non-empty")
            yield Example((("user", row["input"]),), row["output"])
        else:
            raise DataError(f"{where}: expected {{'input', 'output'}} or {{'messages': [...]}}")


def _chat_example(where: str, messages: Any) -> Example:
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(f"{where}: 'messages' must be a list of at least two turns")
    turns: list[tuple[str, str]] = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message needs role (system/user/assistant) and string content")
        turns.append((m["role"], m["content"]))
    if turns[-1][0] != "assistant" or not turns[-1][1]:
        raise DataError(f"{where}: the last message must be a non-empty assistant reply (the target)")
    return Example(tuple(turns[:-1]), turns[-1][1])


def split_heldout(examples: tuple[Example, ...], n: int, seed: int) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """``(train, heldout)``: ``n`` examples drawn with ``seed`` are held out (never trained on)."""
    if n <= 0:
        return examples, ()
    if n >= len(examples):
        raise DataError(f"cannot hold out {n} of {len(examples)} examples: nothing left to train on")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return (tuple(e for i, e in enumerate(examples) if i not in held),
            tuple(examples[i] for i in sorted(held)))
