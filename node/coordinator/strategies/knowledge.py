"""``knowledge`` (knowledge cards): k experts each write a short paragraph of relevant knowledge;
the best-ranked expert answers the question with those paragraphs in its prompt.

The cards are context, not authority (research/paper.md: the best model answers *with* them).
A card can be wrong: on the default 1.5B team a card said "Mercury is known as the Red Planet."
and the answerer repeated it, although each member, asked plainly, says Mars.  So the same k
experts also answer the question without the cards, at the same time as they write them, and
the knowledge-grounded answer is weighed against those answers:

* no clear majority among the members (they disagree, or few answered): the cards decide;
* the grounded answer says the members' clear majority answer: it stands;
* it contradicts that majority: the answerer scores both answers *without the cards* (mean
  token probability, as vote's confidence does), and the grounded one stands only when it is
  the likelier: background may change an answer to one the model finds more plausible on its
  own (the 1.5B: "\\box{John Ford}" 0.642 against its plain "\\box{James Cameron}" 0.625 for
  a PopQA director), not to one it finds less plausible ("Mercury ..." 0.786 against "The Red
  Planet is Mars." 0.864).  Else the members' majority is the answer (settle.py).

``trust_majority=false`` skips the members' answers (k calls fewer) and lets the grounded answer
stand."""

from __future__ import annotations

from typing import Any

import trio

from protocol import QueryRequest

from .. import aggregate, prompts
from ..calls import Ask, Reply, StepFailed
from ..decoding import DETERMINISTIC
from ..pool import Pool
from ..quorum import fan_out
from ..validity import clear_majority, invalid_reason
from .base import Answer, Param, fan_out_params, k_min_of
from .settle import answer_plainly_if_invalid, settle
from .vote import KINDS, ballots_of, tally

PARAMS = {**fan_out_params(3), "card_tokens": Param(int, 96, 8, 512, help="max tokens of each knowledge card"),
          "kind": Param(str, "auto", choices=KINDS, help="answer shape to compare with the members' majority"),
          "trust_majority": Param(bool, True, help="the members also answer without the cards; a grounded answer "
                                                   "against their clear majority stands only when likelier")}


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    k = params["k"]
    q = prompts.question(query)
    relevance = await pool.relevance(q)
    routes = pool.pick(k, relevance=relevance)
    fan = {"k_min": k_min_of(params, k), "grace_s": params["grace_s"], "deadline": pool.until(0.5)}
    found: dict[str, list[Reply]] = {"own": []}

    card = Ask(messages=prompts.knowledge(q), max_tokens=params["card_tokens"], temperature=DETERMINISTIC)

    async def write_cards() -> None:
        found["cards"] = await fan_out(pool, routes, card, role="knowledge", **fan)

    async def answer_plainly() -> None:
        try:
            found["own"] = await fan_out(pool, routes, Ask.of(query), role="proposer", **fan)
        except StepFailed:  # optional evidence: without it the grounded answer is checked for validity only
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_cards)
        if params["trust_majority"]:
            nursery.start_soon(answer_plainly)
    texts = [c.text for c in found["cards"] if c.text.strip()]
    answerers = pool.rank(relevance=relevance)
    # Not streamed: an answer that is no answer (validity.py) or that contradicts the members is replaced.
    final = await pool.generate(answerers[: pool.max_attempts], Ask(messages=prompts.answer_with_knowledge(q, texts)),
                                role="answer", round=1)
    why = f"{final.route.candidate.record.name} answered with {len(texts)} knowledge card(s)"
    if found["own"]:
        return await weigh_against_members(pool, query, final, found["own"], why=why, kind=params["kind"])
    return await answer_plainly_if_invalid(pool, query, final, answerers, why)


async def weigh_against_members(pool: Pool, query: QueryRequest, grounded: Reply, own: list[Reply], *,
                                why: str, kind: str) -> Answer:
    """The grounded answer, unless it contradicts the members' clear majority and its author finds
    that majority's answer likelier without the cards (then settle.py's fallback to the majority)."""
    shape = None if kind == "auto" else kind
    agreed = clear_majority(ballots_of(own, kind))
    if agreed is None or invalid_reason(grounded.text, kind=shape) is not None \
            or invalid_reason(grounded.text, agreed=agreed, kind=shape) is None:
        return settle(pool, grounded, own, why=why, kind=kind)  # no answer: the majority; agrees: it stands
    majority, _ = tally(pool, own, kind)
    ask = Ask.of(query)  # the plain question: how likely each answer is to the answerer on its own
    try:
        mine = aggregate.mean_token_probability(await pool.score(grounded.route, ask, grounded.text,
                                                                 role="confidence"))
        theirs = aggregate.mean_token_probability(await pool.score(grounded.route, ask, majority.text,
                                                                   role="confidence"))
    except StepFailed:  # no evidence either way: the majority, as for any aggregate
        return settle(pool, grounded, own, why=f"{why}; scoring failed", kind=kind)
    weighed = f"without the cards {mine:.3f} for it, {theirs:.3f} for the members' {agreed!r}"
    if mine > theirs:
        return Answer(grounded.text, f"{why}; contradicts the members' majority but is likelier ({weighed})",
                      (grounded.step,), grounded.finish_reason)
    return settle(pool, grounded, own, why=f"{why} ({weighed})", kind=kind)
