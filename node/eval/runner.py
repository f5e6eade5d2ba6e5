"""The eval run: every selected item to every selected system, scored and logged as it arrives.

Jobs are ordered item by item, system by system, so concurrent requests spread over different
experts instead of queueing on one.  A rerun with the same ``--out`` skips what is logged.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from ..evaluation.scoring import build_prompt, score
from ..evaluation.tasks import TaskItem, TaskSet
from .client import (
    VIRTUAL_PREFIX,
    ModelInfo,
    NetworkClient,
    NetworkUnavailable,
    QueryError,
    Reply,
)
from .logs import LogRecord, append, done_keys, read_run, write_run

# Short on purpose: CPU experts generate ~10-20 tokens/s.  A letter needs a few tokens; free-text
# answers need room for a little reasoning before \box{}.  The paper's protocol uses 512.
DEFAULT_MAX_TOKENS = {"multiple_choice": 32, "exact_match": 128, "f1_match": 48}


class PlanError(ValueError):
    """The eval cannot start as asked (unknown expert or strategy, settings clash with a resumed run)."""


@dataclass(frozen=True)
class System:
    """One thing that answers: a pinned expert, a strategy's virtual model, or the baseline."""

    label: str
    kind: str  # expert | strategy | baseline
    model: str  # the OpenAI ``model`` sent
    base_model: str = ""
    tags: tuple[str, ...] = ()
    description: str = ""
    profile: tuple[tuple[str, float], ...] = ()  # signed dev scores (task, accuracy), if its record has any


@dataclass(frozen=True)
class Job:
    system: System
    item: TaskItem


@dataclass
class RunStats:
    asked: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0


def parse_max_tokens(spec: str | None) -> dict[str, int]:
    """``"64"`` (every type) or ``"multiple_choice=16,exact_match=96"`` over the defaults."""
    out = dict(DEFAULT_MAX_TOKENS)
    if not spec:
        return out
    try:
        if "=" not in spec:
            return {k: int(spec) for k in out}
        for part in spec.split(","):
            key, _, value = part.partition("=")
            if key.strip() not in out:
                raise PlanError(f"--max-tokens: unknown task type {key.strip()!r} (use {', '.join(out)})")
            out[key.strip()] = int(value)
    except ValueError as exc:
        if isinstance(exc, PlanError):
            raise
        raise PlanError(f"--max-tokens {spec!r}: expected N or TYPE=N,...") from None
    if any(v < 1 or v > 4096 for v in out.values()):
        raise PlanError("--max-tokens: values must be 1..4096")
    return out


def select_systems(models: list[ModelInfo], experts: str, strategies: list[str], baseline: str | None,
                   baseline_models: list[ModelInfo] | None = None, check_strategies: bool = True) -> list[System]:
    """The systems to evaluate, checked against what the network offers (errors name what exists).

    ``experts`` is ``all``, ``none`` or a comma list of model ids; the baseline is never one of
    the team's single experts.  An expert name served by several peers is one system per peer
    (pinned by peer id), so each single model is measured on its own.  ``check_strategies`` is
    off for a libp2p peer, which does not list its strategies (an unknown one fails per query).
    """
    expert_models = [m for m in models if m.kind == "expert"]
    offered = {m.id: m for m in expert_models}
    if experts == "all":
        chosen = [m for m in expert_models if m.id != baseline]
    elif experts in ("", "none"):
        chosen = []
    else:
        names = [n.strip() for n in experts.split(",") if n.strip()]
        unknown = [n for n in names if n not in offered]
        if unknown:
            raise PlanError(f"unknown expert(s) {', '.join(unknown)}; the network offers: "
                            f"{', '.join(sorted(offered)) or '(none)'}")
        chosen = [offered[n] for n in names]
    systems = []
    for m in chosen:
        if len(m.peers) > 1:
            systems += [System(f"{m.id}@{p[-6:]}", "expert", p, m.base_model, m.tags, m.description, m.dev_scores)
                        for p in m.peers]
        else:
            systems.append(System(m.id, "expert", m.id, m.base_model, m.tags, m.description, m.dev_scores))
    offered_strategies = {m.id[len(VIRTUAL_PREFIX):] for m in models if m.kind == "strategy"}
    for name in strategies:
        name = name.removeprefix(VIRTUAL_PREFIX)
        if check_strategies and name not in offered_strategies:
            raise PlanError(f"unknown strategy {name!r}; the network offers: {', '.join(sorted(offered_strategies))}")
        systems.append(System(VIRTUAL_PREFIX + name, "strategy", VIRTUAL_PREFIX + name))
    if baseline:
        pool = {m.id: m for m in (baseline_models if baseline_models is not None else models) if m.kind == "expert"}
        if baseline not in pool:
            raise PlanError(f"unknown baseline {baseline!r}; offered: {', '.join(sorted(pool)) or '(none)'}")
        b = pool[baseline]
        systems.append(System(baseline, "baseline", baseline, b.base_model, b.tags, b.description))
    if not systems:
        raise PlanError("nothing to evaluate: no expert, strategy or baseline selected")
    return systems


def cost(reply: Reply) -> tuple[int, int, str | None]:
    """(expert calls, tokens generated by them, trace digest) of one answer.

    With a trace (docs/collaboration.md) every step is a call -- generate, score or next_token,
    failed and late ones included: they cost compute too.  Without one the answer came from one
    generation.  The digest is the network's (sha256 of the trace's msgpack) when it sends one.
    """
    trace = reply.trace
    if not trace:
        return 1, reply.completion_tokens, None
    steps = trace.get("steps", [])
    calls = len(steps) + int(trace.get("dropped_steps", 0))
    digest = (
        reply.trace_digest
        or "sha256:" + hashlib.sha256(json.dumps(trace, sort_keys=True, default=str).encode()).hexdigest()
    )
    return calls, sum(int(s.get("tokens", 0)) for s in steps), digest


async def run_eval(client: NetworkClient, tasks: list[TaskSet], systems: list[System], out: Path, *,
                   split: str = "test", limit: int | None = None, max_tokens: dict[str, int] | None = None,
                   temperature: float = 0.0, timeout: float = 300.0, concurrency: int = 4,
                   baseline_client: NetworkClient | None = None, progress: bool = True,
                   task_tags: bool = False, meta: dict[str, Any] | None = None,
                   task_limits: dict[str, int] | None = None) -> RunStats:
    """Ask, score and log every (item, system) not yet logged under ``out``; returns what it did.

    ``task_tags`` sends the task's name as a capability tag with every strategy query (a hint a
    user could give: "this is gsm8k"), so ``route`` can pick the expert that claims the task.
    """
    max_tokens = max_tokens or dict(DEFAULT_MAX_TOKENS)
    settings = {"split": split, "temperature": temperature, "max_tokens": max_tokens, "task_tags": task_tags}
    run = read_run(out)
    clash = {k: (run[k], v) for k, v in settings.items() if k in run and run[k] != v}
    if clash:
        raise PlanError(
            f"{out} holds a run with other settings ({', '.join(f'{k}: {a} != {b}' for k, (a, b) in clash.items())});"
            " use a new --out"
        )
    run.update(settings)
    run.setdefault("limit", limit)
    task_limits = task_limits or {}
    if task_limits:
        run.setdefault("task_limits", {}).update(task_limits)
    run["tasks"] = sorted({*run.get("tasks", []), *(t.name for t in tasks)})
    run.setdefault("task_types", {}).update({t.name: t.task_type for t in tasks})
    known = {s["label"]: s for s in run.get("systems", [])}
    known.update({s.label: {"label": s.label, "kind": s.kind, "model": s.model, "base_model": s.base_model,
                            "tags": list(s.tags), "description": s.description,
                            # the dev profile the report's similar/dissimilar teams compare by
                            **({"profile": dict(s.profile)} if s.profile else {})} for s in systems})
    run["systems"] = list(known.values())
    run.update(meta or {})
    write_run(out, run)

    done = done_keys(out)
    jobs = [Job(system, item) for task in tasks for item in task.items(split, task_limits.get(task.name, limit))
            for system in systems]
    todo = [j for j in jobs if (j.system.label, j.item.task, j.item.split, j.item.key) not in done]
    stats = RunStats(skipped=len(jobs) - len(todo))
    started = time.monotonic()
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="eval", unit="answer", disable=not progress, dynamic_ncols=True)
    send, receive = trio.open_memory_channel[Job](len(todo) or 1)
    for job in todo:
        send.send_nowait(job)
    send.close()

    async def worker() -> None:
        async for job in receive:
            target = baseline_client if (job.system.kind == "baseline" and baseline_client) else client
            tags = (job.item.task,) if task_tags and job.system.kind == "strategy" else ()
            record = await _ask_one(target, job, max_tokens[job.item.task_type], temperature, timeout, tags)
            append(out, [record])
            stats.asked += 1
            stats.errors += record.error is not None
            bar.update(1)
            if record.error:
                bar.set_postfix_str(f"errors={stats.errors}")

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, concurrency)):
                nursery.start_soon(worker)
    finally:
        bar.close()
        stats.seconds = time.monotonic() - started
        run = read_run(out)
        run.setdefault("runs", []).append(
            {
                "started_unix": time.time() - stats.seconds,
                "seconds": round(stats.seconds, 2),
                "asked": stats.asked,
                "skipped": stats.skipped,
                "errors": stats.errors,
            }
        )
        write_run(out, run)
    return stats


async def _ask_one(client: NetworkClient, job: Job, max_tokens: int, temperature: float, timeout: float,
                   tags: tuple[str, ...]) -> LogRecord:
    item, system = job.item, job.system
    base = LogRecord(system=system.label, kind=system.kind, task=item.task, task_type=item.task_type,
                     split=item.split, item=item.key, gold=item.gold, max_tokens=max_tokens)
    started = time.monotonic()
    try:
        reply = await client.ask(system.model, build_prompt(item), max_tokens, temperature, timeout, tags)
    except QueryError as exc:
        return replace(base, seconds=round(time.monotonic() - started, 3), error=str(exc)[:500])
    except NetworkUnavailable:
        raise  # the whole run stops: nothing more can be asked (what is logged stays)
    result = score(item, reply.text)
    calls, tokens, digest = cost(reply)
    served = [str(p.get("expert", "")) for p in reply.provenance]
    return replace(base, reply=reply.text, extracted=result.extracted, score=result.value, correct=result.correct,
                   seconds=round(reply.seconds, 3), finish_reason=reply.finish_reason,
                   prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                   expert_calls=calls, expert_tokens=tokens, served_by=served, trace_digest=digest)
