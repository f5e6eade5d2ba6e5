"""``knowledge`` (knowledge cards): k experts each write a short paragraph of relevant knowledge;
the best-ranked expert answers the question with those paragraphs in its prompt.

The cards are context, not authority (research/paper.md: the best model answers *with* them).
A card can be wrong: on the default 1.5B team a card said "Mercury is known as the Red Planet."
and the answerer repeated it, although each member, asked plainly, says Mars.  So the same k
experts also answer the question without the cards, at the same time as they write them, and the
knowledge-grounded answer is settled against those answers as a moa aggregate is (settle.py):
where the members' own answers hold a clear majority, a grounded answer that contradicts it is
replaced by that majority; where they disagree, the cards decide.  ``trust_majority=false``
skips the members' answers (k calls fewer) and lets the grounded answer stand."""

from __future__ import annotations

from typing import Any

import trio

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask, Reply, StepFailed
from ..decoding import DETERMINISTIC
from ..pool import Pool
from ..quorum import fan_out
from .base import Answer, Param, fan_out_params, k_min_of
from .settle import answer_plainly_if_invalid, settle
from .vote import KINDS

PARAMS = {**fan_out_params(3), "card_tokens": Param(int, 96, 8, 512, help="max tokens of each knowledge card"),
          "kind": Param(str, "auto", choices=KINDS, help="answer shape to compare with the members' majority"),
          "trust_majority": Param(bool, True, help="the members also answer without the cards; a grounded answer "
                                                   "contradicting their clear majority is replaced by it (settle.py)")}


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
        return settle(pool, final, found["own"], why=why, kind=params["kind"])
    return await answer_plainly_if_invalid(pool, query, final, answerers, why)
