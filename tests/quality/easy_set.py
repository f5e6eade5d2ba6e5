"""The easy question set of the quality gate: short facts and small sums a person answers at once.

Written for this project (no dataset's text): every strategy of a network should
answer these, and no strategy may do worse than its best member on them
(tests/quality/test_gate.py, benchmarks/answers.py).  ``dev_items`` adds items
of the benchmark tasks' **dev** splits, read at run time from
``../shared/data/tasks`` (never committed here).

Scoring is deliberately strict about what a person would accept: a number must
be the answer's stated number (the last number, or one marked "= 42" / "is 42"),
a fact must name one of the accepted spellings as whole words within the first
sentence or line.  "The capital of Italy is Bari... Rome" is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.coordinator.aggregate import extract, normalize_text


@dataclass(frozen=True, slots=True)
class Item:
    question: str
    answers: tuple[str, ...]  # accepted spellings (a number: its digits)
    kind: str  # "number" | "text" | "option" | "exact" (dev items scored by the task's scorer)
    source: str = "easy"
    task_item: object | None = None  # a node.evaluation.TaskItem for dev items


def _facts() -> list[Item]:
    rows = [
        ("What is the capital of France?", ("paris",)),
        ("What is the capital of Italy?", ("rome",)),
        ("What is the capital of Japan?", ("tokyo",)),
        ("What is the capital of Germany?", ("berlin",)),
        ("What is the capital of Spain?", ("madrid",)),
        ("What is the capital of England?", ("london",)),
        ("What is the capital of Russia?", ("moscow",)),
        ("What is the capital of Egypt?", ("cairo",)),
        ("What color is the sky on a clear day?", ("blue",)),
        ("What color is grass?", ("green",)),
        ("How many legs does a spider have?", ("8", "eight")),
        ("How many days are in a week?", ("7", "seven")),
        ("How many continents are there on Earth?", ("7", "seven")),
        ("What is the largest planet in our solar system?", ("jupiter",)),
        ("Which planet is known as the Red Planet?", ("mars",)),
        ("What gas do plants absorb from the air?", ("carbon dioxide", "co2")),
        ("What is the chemical symbol for water?", ("h2o",)),
        ("What is the freezing point of water in degrees Celsius?", ("0", "zero")),
        ("Who wrote Romeo and Juliet?", ("shakespeare", "william shakespeare")),
        ("What is the opposite of hot?", ("cold",)),
    ]
    return [Item(q, a, "number" if a[0].isdigit() else "text") for q, a in rows]


def _sums() -> list[Item]:
    rows = [
        ("What is 2 + 2?", 4), ("What is 12 + 30?", 42), ("What is 7 x 6?", 42), ("What is 10 + 5?", 15),
        ("What is 9 - 4?", 5), ("What is 3 x 3?", 9), ("What is 100 - 1?", 99), ("What is 5 + 8?", 13),
        ("What is 20 / 4?", 5), ("What is 6 + 7?", 13), ("What is 8 x 2?", 16), ("What is 15 - 6?", 9),
        ("What is 1 + 1?", 2), ("What is 50 + 50?", 100), ("What is 4 x 5?", 20), ("What is 11 + 11?", 22),
        ("What is 30 - 10?", 20), ("What is 2 x 10?", 20), ("What is 3 + 4?", 7), ("What is 18 / 2?", 9),
    ]
    return [Item(q, (str(v),), "number") for q, v in rows]


def easy_items(n: int | None = None) -> list[Item]:
    """The fixed easy set, facts and sums interleaved (so any prefix mixes both); ``n`` caps it."""
    facts, sums = _facts(), _sums()
    mixed = [item for pair in zip(facts, sums, strict=True) for item in pair]
    return mixed[:n] if n else mixed


def dev_items(tasks: list[str], per_task: int) -> list[Item]:
    """``per_task`` dev items of each task from ../shared/data/tasks (the evaluation's loader and scorer)."""
    from node.evaluation import build_prompt, find_tasks_dir, load_task_dir

    folder = find_tasks_dir()
    if folder is None:
        raise FileNotFoundError("no task files: set MOSAIC_TASKS_DIR to the shared data/tasks folder")
    out = []
    for task in load_task_dir(folder, tasks):
        for item in task.items("dev", per_task):
            out.append(Item(build_prompt(item), (), "exact", source=f"dev:{item.task}", task_item=item))
    return out


_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)])[.!?](?:\s|$)|\n", re.IGNORECASE)


def first_sentence(text: str) -> str:
    """The reply's first sentence (two when the first is a bare "Sure!"), where the answer must be."""
    text = text.strip()
    match = _sentence_end(text)
    if match is None:
        return text
    head = text[: match.start()]
    if len(head.split()) <= 2:
        rest = text[match.end():]
        following = _sentence_end(rest)
        head += " " + (rest[: following.start()] if following else rest)
    return head


def _sentence_end(text: str) -> re.Match[str] | None:
    """The first sentence end outside double quotes: 'The answer to "What is 100 - 1?" is 99.' is one."""
    for match in _SENTENCE_END.finditer(text):
        before = text[: match.start() + 1]
        if before.count('"') % 2 == 0 and before.count("\u201c") == before.count("\u201d"):
            return match
    return None


def correct(item: Item, reply: str) -> bool:
    """Would a person accept ``reply`` as the answer to ``item``?"""
    if item.kind == "exact":
        from node.evaluation import score

        return score(item.task_item, reply).correct  # type: ignore[arg-type]
    head = first_sentence(reply)
    if item.kind == "number":
        words = re.sub(r"[a-z]+", lambda m: _NUMBER_WORDS.get(m.group(), m.group()), head.lower())
        return extract(words, "number") in item.answers
    said = f" {' '.join(re.sub(r'[^a-z0-9 ]', ' ', head.lower()).split())} "
    return any(f" {normalize_text(a)} " in said for a in item.answers)
