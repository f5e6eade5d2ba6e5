"""``prompt-route``: the best-ranked expert reads the question and the numbered self-descriptions
of the experts and names one, which answers (as in the toolkit's prompt router)."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask, QueryFailed, StepFailed
from ..pool import Pool
from .base import Answer, Param

PARAMS = {"failover": Param(int, 3, 1, 8, help="experts tried in turn when the chosen one fails")}


def describe(record: Any) -> str:
    tags = f" (tags: {', '.join(record.tags)})" if record.tags else ""
    return f"{record.name}: {record.description or 'a general assistant'}{tags}"


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    routes = pool.rank()
    if not routes:
        raise QueryFailed("unavailable", "no expert is known to this node")
    q = prompts.question(query)
    choice: int | None = None
    try:
        reply = await pool.generate(routes[:2], Ask(messages=prompts.choose_expert(q, [describe(r.candidate.record)
                                                                                      for r in routes]),
                                                    max_tokens=4, temperature=0.0),
                                    role="router", deadline=pool.until(0.3))
        choice = prompts.parse_choice(reply.text, len(routes))
        pool.end_step(reply.step, answer=None if choice is None else str(choice + 1))
    except StepFailed as exc:
        if exc.code in ("bad_request", "too_large"):
            raise
    chosen = routes[choice] if choice is not None else routes[0]
    order = [chosen] + [r for r in routes if r is not chosen]
    answer = await pool.generate(order[: params["failover"]], Ask.of(query), role="answer", stream=True)
    why = (f"router chose #{choice + 1} {chosen.candidate.record.name}" if choice is not None
           else f"router gave no valid choice; best-ranked {chosen.candidate.record.name} answered")
    return Answer(answer.text, why, (answer.step,), answer.finish_reason)
