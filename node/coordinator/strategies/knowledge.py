"""``knowledge`` (knowledge cards): k experts each write a short paragraph of relevant knowledge;
the best-ranked expert answers the question with those paragraphs in its prompt."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask
from ..decoding import DETERMINISTIC
from ..pool import Pool
from ..quorum import fan_out
from .base import Answer, Param, fan_out_params, k_min_of
from .settle import answer_plainly_if_invalid

PARAMS = {**fan_out_params(3), "card_tokens": Param(int, 96, 8, 512, help="max tokens of each knowledge card")}


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    k = params["k"]
    q = prompts.question(query)
    relevance = await pool.relevance(q)
    routes = pool.pick(k, relevance=relevance)
    cards = await fan_out(pool, routes, Ask(messages=prompts.knowledge(q), max_tokens=params["card_tokens"],
                                            temperature=DETERMINISTIC),
                          role="knowledge", k_min=k_min_of(params, k), grace_s=params["grace_s"],
                          deadline=pool.until(0.5))
    texts = [c.text for c in cards if c.text.strip()]
    answerers = pool.rank(relevance=relevance)
    # Not streamed: an answer that is no answer (validity.py) is replaced by a plain one.
    final = await pool.generate(answerers[: pool.max_attempts], Ask(messages=prompts.answer_with_knowledge(q, texts)),
                                role="answer", round=1)
    why = f"{final.route.candidate.record.name} answered with {len(texts)} knowledge card(s)"
    return await answer_plainly_if_invalid(pool, query, final, answerers, why)
