"""``moa`` (mixture of agents): k proposers answer; in each further layer the proposers answer again
seeing the previous layer's answers; an aggregator expert writes the final answer from the last layer.

The aggregator alone writes the answer, so it is chosen among the proposers that gave the answer a
clear majority of the last layer gave (consensus.majority), when there is one: a lone dissenter,
perhaps a liar that answers fastest and so ranks first, does not get to overrule the others."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask, Reply
from ..decoding import DETERMINISTIC
from ..pool import Pool
from ..quorum import fan_out
from ..routing import Route
from ..validity import clear_majority
from .base import Answer, Param, fan_out_params, k_min_of
from .settle import settle
from .vote import KINDS, ballots_of

PARAMS = {**fan_out_params(3), "layers": Param(int, 1, 1, 3, help="proposer layers before the aggregator"),
          "kind": Param(str, "auto", choices=KINDS, help="answer shape to compare with the members' majority"),
          "trust_majority": Param(bool, True, help="an aggregate contradicting the members' clear majority is "
                                                   "replaced by that majority (settle.py)")}


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    k, layers = params["k"], params["layers"]
    q = prompts.question(query)
    routes = pool.pick(k)
    ask = Ask.of(query)
    answers: list[str] = []
    for layer in range(layers):
        budget = pool.until(0.6 / (layers - layer))
        replies = await fan_out(pool, routes, ask, role="proposer", round=layer, k_min=k_min_of(params, k),
                                grace_s=params["grace_s"], deadline=budget)
        answers = [r.text for r in replies]
        # Later layers revise deterministically: their diversity is the different proposals they read.
        ask = Ask(messages=prompts.aggregate(q, answers), temperature=DETERMINISTIC)
    aggregators = with_majority_first(pool.rank(), replies)
    # Not streamed: an invalid aggregate is replaced by the members' majority (settle.py) before
    # any of it reaches the client.
    final = await pool.generate(aggregators[: pool.max_attempts],
                                Ask(messages=prompts.aggregate(q, answers), temperature=DETERMINISTIC),
                                role="aggregator", round=layers)
    why = f"aggregator {final.route.candidate.record.name} synthesised {len(answers)} proposals ({layers} layer(s))"
    return settle(pool, final, replies, why=why, kind=params["kind"], trust_majority=params["trust_majority"])


def with_majority_first(ranked: list[Route], replies: list[Reply]) -> list[Route]:
    """``ranked`` with the experts who answered the clear majority's answer first (rank order kept).

    The majority weighs each member by its verified competence (validity.clear_majority), so a
    proven specialist is not outvoted by two members that share a wrong answer.
    """
    ballots = ballots_of(replies, "auto")
    agreed = clear_majority(ballots)
    if agreed is None:
        return ranked
    inside_peers = {r.route.peer_id for r, b in zip(replies, ballots, strict=True) if b.key == agreed}
    inside = [r for r in ranked if r.peer_id in inside_peers]
    return inside + [r for r in ranked if r not in inside]
