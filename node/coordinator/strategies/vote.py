"""``vote``: k diverse experts answer; answers are extracted and normalised, the weighted majority
wins.

Confidence-aware (issue 18): each ballot weighs by its expert's verified accuracy on the query's
task (competence.py: signed self-evaluation and spot checks; the optimal weights for independent
voters), and when no answer holds a majority of the weight, each contested answer's weight is
multiplied by its author's confidence in it (mean token probability, one ``score`` call each).

Ties go to the answer of the most trusted member (reputation.trust: right spot checks and
agreements, never rank, load, speed or a claimed dev score: a liar that advertises load 0
and answers at once ranked first and wrote 48 of 65 answers, issue 22), then to a draw
keyed by the request, which nobody can steer.  The winning answer's text is the most
trusted of its voters'."""

from __future__ import annotations

import hashlib
from typing import Any

from protocol import QueryRequest

from .. import aggregate, competence
from ..calls import Ask, Reply, StepFailed
from ..pool import Pool
from ..quorum import fan_out
from .base import Answer, Param, fan_out_params, k_min_of

KINDS = ("auto", "number", "option", "text")
PARAMS = {**fan_out_params(3), "kind": Param(str, "auto", choices=KINDS, help="answer shape to extract"),
          "weighted": Param(bool, True, help="weigh ballots by verified per-task accuracy (competence.py)"),
          "confidence": Param(bool, True, help="break a vote without majority by the authors' confidence "
                                               "(mean token probability of each contested answer)")}


def ballots_of(replies: list[Reply], kind: str, *, weighted: bool = True,
               pool: Pool | None = None) -> list[aggregate.Ballot]:
    """One ballot per reply: its answer key, its verified-competence weight and, given the query's
    ``pool``, its tie-breaker (trust, then a draw keyed by the request)."""
    shape = None if kind == "auto" else kind
    keys = [aggregate.extract(reply.text, shape) for reply in replies]  # type: ignore[arg-type]
    options = competence.options_of(shape, keys)
    ballots = []
    for reply, key in zip(replies, keys, strict=True):
        dev = reply.route.candidate.dev_score
        weight = competence.vote_weight(dev, options) if weighted else 1.0
        ballots.append(aggregate.Ballot(key, weight, tiebreak=0.0 if pool is None else tiebreak_of(pool, reply)))
    return ballots


def tiebreak_of(pool: Pool, reply: Reply) -> float:
    """The member's trust, then a draw keyed by the request that nobody can steer."""
    draw = int.from_bytes(hashlib.sha256(f"{pool.query.request_id}:{reply.route.peer_id}".encode()).digest()[:6])
    return round(pool.trust(reply.route.peer_id), 6) + draw / 2**48 * 1e-7


def tally(pool: Pool, replies: list[Reply], kind: str, *, weighted: bool = True,
          ballots: list[aggregate.Ballot] | None = None) -> tuple[Reply, aggregate.Decision]:
    """Vote over replies; marks each trace step with its extracted answer and the winner's votes."""
    ballots = ballots if ballots is not None else ballots_of(replies, kind, weighted=weighted, pool=pool)
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
    ballots = ballots_of(replies, params["kind"], weighted=params["weighted"], pool=pool)
    contested = aggregate.vote(ballots).share <= 0.5 and len({b.key for b in ballots if b.key}) > 1
    how = ""
    if contested and params["confidence"]:
        ballots = await weigh_by_confidence(pool, query, replies, ballots)
        how = ", no majority: weighed by the authors' confidence"
    winner, decision = tally(pool, replies, params["kind"], ballots=ballots)
    count = sum(1 for b in ballots if b.key == decision.winner)
    weights = {round(b.weight, 6) for b in ballots}
    weighed = f", {decision.share:.0%} of the weight" if len(weights) > 1 else ""
    why = f"majority {decision.winner!r} with {count}/{len(ballots)} votes of {len(replies)} answers{weighed}{how}"
    return Answer(winner.text, why, (winner.step,), winner.finish_reason)


async def weigh_by_confidence(pool: Pool, query: QueryRequest, replies: list[Reply],
                              ballots: list[aggregate.Ballot]) -> list[aggregate.Ballot]:
    """Each ballot's weight times its author's mean token probability of its own answer (a failed
    score call leaves the ballot's weight as it was)."""
    ask = Ask.of(query)
    out = []
    for reply, ballot in zip(replies, ballots, strict=True):
        if not reply.text.strip() or not ballot.key:
            out.append(ballot)
            continue
        try:
            logprobs = await pool.score(reply.route, ask, reply.text, role="confidence")
        except StepFailed:  # optional evidence: an expert that cannot score (or fails to) leaves the weight
            out.append(ballot)
            continue
        confidence = aggregate.mean_token_probability(logprobs)
        pool.end_step(reply.step, score=round(confidence, 4))
        out.append(aggregate.Ballot(ballot.key, ballot.weight * confidence, ballot.tiebreak))
    return out
