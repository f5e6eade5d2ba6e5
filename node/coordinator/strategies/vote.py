"""``vote``: k diverse experts answer; answers are extracted and normalised, the majority wins.

Ties go to the answer of the most trusted member (reputation.trust: right spot checks and
agreements, never rank, load, speed or a claimed dev score: a liar that advertises load 0
and answers at once ranked first and wrote 48 of 65 answers, issue 22), then to a draw
keyed by the request, which nobody can steer.  The winning answer's text is the most
trusted of its voters'."""

from __future__ import annotations

import hashlib
from typing import Any

from protocol import QueryRequest

from .. import aggregate
from ..calls import Ask, Reply
from ..pool import Pool
from ..quorum import fan_out
from .base import Answer, Param, fan_out_params, k_min_of

KINDS = ("auto", "number", "option", "text")
PARAMS = {**fan_out_params(3), "kind": Param(str, "auto", choices=KINDS, help="answer shape to extract")}


def tally(pool: Pool, replies: list[Reply], kind: str) -> tuple[Reply, aggregate.Decision]:
    """Vote over replies; marks each trace step with its extracted answer and the winner's votes."""
    shape = None if kind == "auto" else kind
    ballots = []
    for reply in replies:
        draw = int.from_bytes(hashlib.sha256(f"{pool.query.request_id}:{reply.route.peer_id}".encode()).digest()[:6])
        ballots.append(aggregate.Ballot(aggregate.extract(reply.text, shape),  # type: ignore[arg-type]
                                        tiebreak=round(pool.trust(reply.route.peer_id), 6) + draw / 2**48 * 1e-7))
    decision = aggregate.vote(ballots)
    for reply, ballot in zip(replies, ballots, strict=True):
        votes = sum(1 for b in ballots if b.key == ballot.key and b.key)
        pool.end_step(reply.step, answer=ballot.key, votes=votes)
    return replies[decision.index], decision


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    k = params["k"]
    routes = pool.pick(k)
    spares = [r for r in pool.rank() if r not in routes]
    replies = await fan_out(pool, routes, Ask.of(query), role="proposer", k_min=k_min_of(params, k),
                            grace_s=params["grace_s"], spares=spares)
    winner, decision = tally(pool, replies, params["kind"])
    why = f"majority {decision.winner!r} with {decision.votes:g}/{decision.total:g} votes of {len(replies)} answers"
    return Answer(winner.text, why, (winner.step,), winner.finish_reason)
