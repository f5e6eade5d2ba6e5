"""``debate``: round 1 all k experts answer; in each later round every expert sees the others'
answers and revises its own; the final answer is the majority of the last round (``final=vote``) or
the best expert's summary (``final=summary``).  ``refine`` is the same discussion ending in a summary."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask, Reply
from ..decoding import DETERMINISTIC
from ..pool import Pool
from ..quorum import fan_out
from ..validity import invalid_reason
from .base import Answer, Param, fan_out_params, k_min_of
from .settle import settle
from .vote import KINDS, tally

PARAMS = {
    **fan_out_params(3),
    "rounds": Param(int, 2, 1, 4, help="rounds of answers (1 = no revision)"),
    "final": Param(str, "vote", choices=("vote", "summary"), help="how the last round becomes one answer"),
    "kind": Param(str, "auto", choices=KINDS, help="answer shape to extract when voting"),
    "trust_majority": Param(bool, True, help="a summary contradicting the first round's clear majority is "
                                             "replaced by the last round's majority (settle.py)"),
}


async def discuss(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> list[Reply]:
    """The rounds; returns the last round's replies (an expert that dropped out stays out)."""
    k, rounds = params["k"], params["rounds"]
    q = prompts.question(query)
    routes = pool.pick(k)
    replies = await fan_out(pool, routes, Ask.of(query), role="debater", round=0, k_min=k_min_of(params, k),
                            grace_s=params["grace_s"], deadline=pool.until(0.8 / rounds))
    for rnd in range(1, rounds):
        routes = [r.route for r in replies]
        # Revisions are deterministic: each expert's new input (the others' answers) is the diversity.
        asks = [Ask(messages=prompts.revise(q, r.text, [o.text for o in replies if o is not r]),
                    temperature=DETERMINISTIC) for r in replies]
        if len(replies) < 2:
            break
        revised = await fan_out(pool, routes, asks, role="debater", round=rnd, k_min=k_min_of(params, len(routes)),
                                grace_s=params["grace_s"], deadline=pool.until(0.8 / (rounds - rnd)))
        # An expert that failed this round, or whose revision is no answer (validity.py: small
        # models answer "I'm ready to help"), keeps its previous answer.
        by_peer = {(r.route.peer_id, r.route.adapter): r for r in revised if invalid_reason(r.text) is None}
        replies = [by_peer.get((r.route.peer_id, r.route.adapter), r) for r in replies]
    return replies


async def conclude(pool: Pool, query: QueryRequest, params: dict[str, Any], replies: list[Reply]) -> Answer:
    rounds = params["rounds"]
    if params["final"] == "vote":
        winner, decision = tally(pool, replies, params["kind"])
        why = (f"after {rounds} round(s): majority {decision.winner!r} with {decision.share:.0%} of the "
               "votes")
        return Answer(winner.text, why, (winner.step,), winner.finish_reason)
    q = prompts.question(query)
    # Not streamed: an invalid summary is replaced by the last round's majority (settle.py).
    summary = await pool.generate(pool.rank()[: pool.max_attempts], Ask(messages=prompts.summarize(
        q, [r.text for r in replies]), temperature=DETERMINISTIC), role="summarizer", round=rounds)
    why = f"after {rounds} round(s): summary by {summary.route.candidate.record.name}"
    return settle(pool, summary, replies, why=why, kind=params.get("kind", "auto"),
                  trust_majority=params.get("trust_majority", True))


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    return await conclude(pool, query, params, await discuss(pool, query, params))
