"""``cascade``: experts from cheap to strong; each answers in turn until one is confident enough.

Confidence is the answer's mean token probability, measured by the expert that
wrote it (``score`` of its own answer: one forward, no sampling; the infer
protocol already returns per-token log-probabilities there).  "Cheap to
strong": capability records carry no cost, so experts with a lower dev score
come first, then faster observed ones.  When none passes the threshold, the
most confident answer is returned.

An expert whose verified competence on the query's task (competence.py) is more than ``margin``
below the best one's is left out: it is not a cheaper stand-in but a worse one, and a wrong answer
it is sure of would end the cascade (the competence simulation, docs/collaboration.md, measured
0.61 with the weakest first where the best specialist alone reached 0.91).
"""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import aggregate
from ..calls import Ask, QueryFailed, Reply, StepFailed
from ..pool import Pool
from ..routing import Route
from .base import Answer, Param

PARAMS = {
    "threshold": Param(float, 0.5, 0.0, 1.0, help="mean token probability that stops the cascade"),
    "max_steps": Param(int, 3, 1, 8, help="experts tried at most"),
    "margin": Param(float, 0.2, 0.0, 1.0, help="leave out experts whose verified competence is this far below "
                                               "the best one's"),
}


def competent_enough(routes: list[Route], margin: float) -> list[Route]:
    """The routes whose verified competence is within ``margin`` of the best known (unknown ones stay)."""
    known = [r.candidate.dev_score for r in routes if r.candidate.dev_score is not None]
    if not known:
        return routes
    floor = max(known) - margin
    return [r for r in routes if r.candidate.dev_score is None or r.candidate.dev_score >= floor]


def cheap_first(routes: list[Route]) -> list[Route]:
    def cost(route: Route) -> tuple[float, float]:
        dev = route.candidate.dev_score
        return (dev if dev is not None else 0.5, route.candidate.latency_s or 0.0)

    return sorted(routes, key=cost)


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    ranked = pool.rank()
    if not ranked:
        raise QueryFailed("unavailable", "no expert is known to this node")
    order = cheap_first(competent_enough(ranked, params["margin"]))[: params["max_steps"]]
    ask = Ask.of(query)
    best: tuple[float, Reply] | None = None
    for i, route in enumerate(order):
        try:
            reply = await pool.generate([route], ask, role="cascade", round=i,
                                        deadline=pool.until(1.0 / (len(order) - i)))
            logprobs = await pool.score(route, ask, reply.text, role="confidence", round=i) if reply.text else []
        except StepFailed as exc:
            if exc.code in ("bad_request", "too_large"):
                raise
            continue
        confidence = aggregate.mean_token_probability(logprobs)
        pool.end_step(reply.step, score=round(confidence, 4))
        if best is None or confidence > best[0]:
            best = (confidence, reply)
        if confidence >= params["threshold"]:
            why = (f"{route.candidate.record.name} answered with mean token probability {confidence:.2f} >= "
                   f"{params['threshold']:g} after {i + 1} expert(s)")
            return Answer(reply.text, why, (reply.step,), reply.finish_reason)
    if best is None:
        raise QueryFailed("unavailable", "every expert of the cascade failed")
    confidence, reply = best
    why = (f"no expert reached {params['threshold']:g}; most confident was {reply.route.candidate.record.name} "
           f"({confidence:.2f})")
    return Answer(reply.text, why, (reply.step,), reply.finish_reason)
