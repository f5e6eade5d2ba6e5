"""Self-evaluation: score this node's expert on named task files, for its capability record.

The items are the first ``limit`` items of a split in file order (``TaskSet.items``), so
anyone with the same file asks the same questions; ``items_sha256`` pins them.  Prompts
and scoring are :mod:`node.evaluation`'s (one scorer for reports, self-evaluation and
spot checks).  Requests go through the node's own inference worker like any other, so
they batch with live traffic instead of blocking it, and greedy decoding makes a
spot-checker's replies comparable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from protocol import (
    ChatMessage,
    EvalScore,
    GenerateEvent,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
)

from ...logs import event, get_logger

if TYPE_CHECKING:
    from .local import LocalExpert

log = get_logger("expert.self_eval")

# Reply lengths: a letter for multiple choice; room for a short derivation and \box{} otherwise.
MAX_TOKENS = {"multiple_choice": 16, "exact_match": 64, "f1_match": 32}
# Generations in flight at once (the worker batches them).
_CONCURRENCY = 8


class SelfEvalError(ValueError):
    """A task named for self-evaluation cannot be found or read."""


def default_tasks_dir() -> Path:
    """``$MOSAIC_TASKS_DIR``, else ``shared/data/tasks`` beside the repository or a folder above it."""
    from node.evaluation import find_tasks_dir

    env = os.environ.get("MOSAIC_TASKS_DIR")
    if env:
        return Path(env).expanduser()
    return find_tasks_dir() or Path("shared/data/tasks")


def task_path(name: str, tasks_dir: str | Path | None = None) -> Path:
    """A task name (``gsm8k``) in the tasks dir, or a path to a task file."""
    candidate = Path(name).expanduser()
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    path = Path(tasks_dir).expanduser() if tasks_dir else default_tasks_dir()
    path = path / f"{name}.json"
    if not path.is_file():
        raise SelfEvalError(f"self-eval task {name!r}: no task file {path} (set expert.tasks_dir or MOSAIC_TASKS_DIR)")
    return path


def load_items(name: str, split: str, limit: int, tasks_dir: str | Path | None = None) -> tuple[str, Sequence[Any]]:
    """``(task name, items)``: the first ``limit`` items of ``split``."""
    from node.evaluation import TaskFileError, load_tasks

    try:
        tasks = load_tasks(task_path(name, tasks_dir))
        items = tasks.items(split, limit)
    except (TaskFileError, KeyError) as exc:
        raise SelfEvalError(str(exc)) from None
    if not items:
        raise SelfEvalError(f"task {name!r} has no {split} items")
    return tasks.name, items


def items_digest(items: Sequence[Any]) -> str:
    """sha256 over the items' keys, questions, choices and answers (canonical JSON)."""
    canon = [[i.key, i.question, [list(c) for c in i.choices], list(i.answers)] for i in items]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def request_for(item: Any, *, request_id: str, adapter: str | None, max_new_tokens: int) -> GenerateRequest:
    """The exact request a self-evaluation and a spot check send for ``item`` (greedy)."""
    from node.evaluation import build_prompt

    return GenerateRequest(
        request_id=request_id, adapter=adapter, stream=False, timeout_s=600.0,
        messages=(ChatMessage(role="user", content=build_prompt(item)),),
        sampling=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
    )


async def ask_and_score(generate: Callable[[GenerateRequest], AsyncGenerator[GenerateEvent, None]], item: Any, *,
                        request_id: str, adapter: str | None, max_new_tokens: int) -> bool:
    """Ask ``item`` through ``generate`` with the request of :func:`request_for`; whether the reply
    is correct.  What a self-evaluation does per item, and a spot check of its claim too."""
    from node.evaluation import score

    request = request_for(item, request_id=request_id, adapter=adapter, max_new_tokens=max_new_tokens)
    reply = ""
    async with aclosing(generate(request)) as events:
        async for message in events:
            if isinstance(message, GenerateResult):
                reply = message.text
    scored = score(item, reply)
    event(log, "self_eval_item", level=logging.DEBUG, item=item.key, adapter=adapter or "-", reply=reply[:200],
          extracted=scored.extracted, correct=bool(scored.correct))
    return bool(scored.correct)


async def evaluate(local: LocalExpert, name: str, *, split: str = "dev", limit: int = 20,
                   adapter: str | None = None, tasks_dir: str | Path | None = None,
                   max_tokens: int | None = None) -> EvalScore:
    """Ask the local expert the first ``limit`` items of task ``name`` and score the replies
    (``max_tokens`` new tokens each; default: :data:`MAX_TOKENS` of the task type)."""
    task, items = await trio.to_thread.run_sync(load_items, name, split, limit, tasks_dir)
    max_new = max_tokens or MAX_TOKENS.get(items[0].task_type, 64)
    correct = 0
    limiter = trio.CapacityLimiter(_CONCURRENCY)

    async def one(index: int, item: Any) -> None:
        nonlocal correct
        async with limiter:
            # Awaited first, then added: `correct += await ...` reads `correct` before the await, so
            # concurrent items overwrote each other's counts (a 50% expert was signed as 2-7%).
            right = await ask_and_score(local.generate, item, request_id=f"self-eval-{task}-{index}",
                                        adapter=adapter, max_new_tokens=max_new)
            correct += right

    async with trio.open_nursery() as nursery:
        for index, item in enumerate(items):
            nursery.start_soon(one, index, item)
    result = EvalScore(task=task, split=split, n=len(items), accuracy=round(correct / len(items), 4),
                       items_sha256=items_digest(items), adapter=adapter, max_new_tokens=max_new)
    event(log, "self_eval", task=task, split=split, n=result.n, accuracy=result.accuracy, adapter=adapter or "-")
    return result


async def evaluate_all(local: LocalExpert, names: Sequence[str], adapters: Sequence[str | None], *,
                       split: str = "dev", limit: int = 20, tasks_dir: str | Path | None = None,
                       max_tokens: int | None = None) -> list[EvalScore]:
    """Every (task, adapter) pair, in order; a task that cannot be read is logged and skipped."""
    scores: list[EvalScore] = []
    for name in names:
        for adapter in adapters:
            try:
                scores.append(await evaluate(local, name, split=split, limit=limit, adapter=adapter,
                                             tasks_dir=tasks_dir, max_tokens=max_tokens))
            except SelfEvalError as exc:
                event(log, "self_eval_skipped", task=name, error=str(exc)[:300])
                break
    return scores[:16]  # the record's bound
