"""``route``: one expert answers, chosen by tags, semantic match to its self-description, dev
scores, load, latency and failures (routing.py); the next ones are the failover order."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask, QueryFailed
from ..pool import Pool
from .base import Answer, Param

PARAMS = {
    "semantic": Param(bool, True, help="match the query to experts' descriptions with MiniLM"),
    "failover": Param(int, 3, 1, 8, help="experts tried in turn when one fails"),
}


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    relevance = await pool.relevance(prompts.question(query)) if params["semantic"] and not query.model else {}
    routes = pool.rank(relevance=relevance)
    if not routes:
        raise QueryFailed("unavailable", "no expert is known to this node")
    reply = await pool.generate(routes[: params["failover"]], Ask.of(query), role="answer", stream=True)
    route = next(r for r in routes if r.peer_id == pool.steps[reply.step].peer)
    pool.end_step(reply.step, score=round(route.score, 3))
    similarity = relevance.get(route.peer_id)
    why = f"routed to {route.candidate.record.name} (score {route.score:.2f}"
    why += f", similarity {similarity:.2f})" if similarity is not None else ")"
    return Answer(reply.text, why, (reply.step,), reply.finish_reason)
