"""Task files (the MoCo format of ``shared/data/tasks``): load and validate them into ``TaskItem``s.

A file is ``{"name", "task_type", "dev": [item...], "test": [item...]}``; the item shape depends on
the task type (see ``shared/data/tasks/README.md``).  Anything else is a ``TaskFileError`` that
names the file, the split, the item index and what is wrong, so a broken file fails at load time,
not halfway through an hour of generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_TYPES = ("multiple_choice", "exact_match", "f1_match")
SPLITS = ("dev", "test")


class TaskFileError(ValueError):
    """A task file that cannot be used as it is; the message names the file and the problem."""


@dataclass(frozen=True)
class TaskItem:
    """One benchmark question with its gold answer.

    ``key`` identifies the item within its task and split across runs (it is what logs and resume
    use): the item's ``id``, with ``#2``, ``#3`` ... appended to later duplicates (math.json
    repeats some ids).  ``answers`` is the option letter for multiple choice, the one ``output``
    for exact match, and every alias for f1_match.
    """

    task: str
    task_type: str
    split: str
    key: str
    question: str
    answers: tuple[str, ...]
    choices: tuple[tuple[str, str], ...] = ()  # (letter, text) in file order; multiple_choice only
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def gold(self) -> str:
        """The answer as shown in logs: the letter, the output, or the first alias."""
        return self.answers[0]


@dataclass(frozen=True)
class TaskSet:
    """One task file: its items per split, and how many items had no gold answer (skipped)."""

    name: str
    task_type: str
    splits: dict[str, tuple[TaskItem, ...]]
    skipped: dict[str, int]

    def items(self, split: str, limit: int | None = None) -> tuple[TaskItem, ...]:
        """The first ``limit`` items of ``split`` (file order, so a slice is the same on every run)."""
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {split!r} (has {', '.join(self.splits)})")
        items = self.splits[split]
        return items if limit is None else items[:limit]


def load_tasks(path: str | Path) -> TaskSet:
    """Read and validate one task file; raises ``TaskFileError`` naming the problem."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such task file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise TaskFileError(f"{path}: top level must be an object with name, task_type, dev, test")
    name, task_type = raw.get("name"), raw.get("task_type")
    if not isinstance(name, str) or not name:
        raise TaskFileError(f"{path}: 'name' must be a non-empty string")
    if task_type not in TASK_TYPES:
        raise TaskFileError(f"{path}: 'task_type' is {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    splits: dict[str, tuple[TaskItem, ...]] = {}
    skipped: dict[str, int] = {}
    for split in SPLITS:
        entries = raw.get(split)
        if not isinstance(entries, list):
            raise TaskFileError(f"{path}: '{split}' must be a list of items")
        seen: dict[str, int] = {}
        items = []
        skipped[split] = 0
        for index, entry in enumerate(entries):
            where = f"{path}: {split}[{index}]"
            if not isinstance(entry, dict):
                raise TaskFileError(f"{where}: item must be an object")
            if "id" not in entry or not isinstance(entry["id"], (str, int)) or isinstance(entry["id"], bool):
                raise TaskFileError(f"{where}: missing or non-string/int 'id'")
            if task_type != "multiple_choice" and entry.get("output") is None and isinstance(entry.get("input"), str):
                # A handful of math items carry output null: they cannot be scored, so they are not asked.
                skipped[split] += 1
                continue
            base = str(entry["id"])
            seen[base] = seen.get(base, 0) + 1
            key = base if seen[base] == 1 else f"{base}#{seen[base]}"
            items.append(_item(where, name, task_type, split, key, entry))
        splits[split] = tuple(items)
    return TaskSet(name=name, task_type=task_type, splits=splits, skipped=skipped)


def load_task_dir(directory: str | Path, names: list[str] | None = None) -> list[TaskSet]:
    """The task files ``<directory>/<name>.json`` for ``names`` (all ``*.json`` but MANIFEST if None)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TaskFileError(f"{directory}: not a directory of task files")
    if names is None:
        names = sorted(p.stem for p in directory.glob("*.json") if p.name != "MANIFEST.json")
    missing = [n for n in names if not (directory / f"{n}.json").is_file()]
    if missing:
        have = sorted(p.stem for p in directory.glob("*.json") if p.name != "MANIFEST.json")
        raise TaskFileError(f"{directory}: no task file for {', '.join(missing)} (have: {', '.join(have)})")
    return [load_tasks(directory / f"{n}.json") for n in names]


def _item(where: str, task: str, task_type: str, split: str, key: str, entry: dict[str, Any]) -> TaskItem:
    meta = {k: v for k, v in entry.items() if k not in ("question", "choices", "answer", "input", "output")}
    if task_type == "multiple_choice":
        question, choices, answer = entry.get("question"), entry.get("choices"), entry.get("answer")
        if not isinstance(question, str):
            raise TaskFileError(f"{where}: multiple_choice item needs a string 'question'")
        if not isinstance(choices, dict) or len(choices) < 2:
            raise TaskFileError(f"{where}: 'choices' must be an object of at least two options")
        options = []
        for letter, text in choices.items():
            if len(letter) != 1 or not letter.isalnum():
                raise TaskFileError(f"{where}: option key {letter!r} must be one letter or digit")
            if text is None:  # culturalbench_hard dev[221] has an option without text: shown empty
                text = ""
            if not isinstance(text, (str, int, float)) or isinstance(text, bool):
                raise TaskFileError(f"{where}: option {letter!r} text must be a string")
            options.append((letter, str(text)))
        if answer not in choices:
            raise TaskFileError(f"{where}: 'answer' {answer!r} is not one of the options {', '.join(choices)}")
        return TaskItem(task, task_type, split, key, question, (str(answer),), tuple(options), meta)
    question, output = entry.get("input"), entry.get("output")
    if not isinstance(question, str):
        raise TaskFileError(f"{where}: {task_type} item needs a string 'input'")
    if task_type == "exact_match":
        if not isinstance(output, (str, int, float)) or isinstance(output, bool):
            raise TaskFileError(f"{where}: 'output' must be a string, got {type(output).__name__}")
        return TaskItem(task, task_type, split, key, question, (str(output),), (), meta)
    return TaskItem(task, task_type, split, key, question, _aliases(where, output), (), meta)


def _aliases(where: str, output: Any) -> tuple[str, ...]:
    """f1_match ``output`` is a list of aliases written as a JSON string (or, leniently, a real list)."""
    value = output
    if isinstance(output, str):
        try:
            value = json.loads(output)
        except json.JSONDecodeError:
            raise TaskFileError(f"{where}: 'output' must be a list of aliases written as a JSON string") from None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise TaskFileError(f"{where}: 'output' must be a non-empty list of alias strings")
    return tuple(value)


def find_tasks_dir(start: str | Path | None = None) -> Path | None:
    """``shared/data/tasks`` beside the repository (or beside any folder above ``start``).

    The task files are never copied into the repo: /work/main, a worktree below /work/wt and CI's
    fresh clone all have ``shared/`` next to the checkout or a folder above it.
    """
    here = Path(start) if start is not None else Path(__file__).resolve().parents[2]
    for folder in (here, *here.parents):
        candidate = folder / "shared" / "data" / "tasks"
        if candidate.is_dir():
            return candidate
    return None
