"""``decompose``: the best expert splits the question into sub-questions; each goes to the expert
that matches it best (distinct experts first), in parallel; the best expert composes the answer."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask, QueryFailed
from ..decoding import DETERMINISTIC
from ..pool import Pool
from ..quorum import fan_out_indexed
from ..routing import Route
from .base import Answer, Param
from .settle import answer_plainly_if_invalid

PARAMS = {
    "parts": Param(int, 3, 1, 6, help="at most this many sub-questions"),
    "sub_tokens": Param(int, 96, 8, 512, help="max tokens of each sub-answer"),
    "grace_s": Param(float, 1.0, 0.0, 60.0, help="seconds to wait for the rest once all but one sub-answer is in"),
}


async def _route_each(pool: Pool, subs: list[str]) -> list[Route]:
    chosen: list[Route] = []
    for sub in subs:
        used = {r.peer_id for r in chosen}
        ranked = pool.rank(relevance=await pool.relevance(sub))
        chosen.append(next((r for r in ranked if r.peer_id not in used), ranked[0]))
    return chosen


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    q = prompts.question(query)
    best = pool.rank(relevance=await pool.relevance(q))
    if not best:
        raise QueryFailed("unavailable", "no expert is known to this node")
    plan = await pool.generate(best[:2], Ask(messages=prompts.decompose(q, params["parts"]), max_tokens=128,
                                             temperature=DETERMINISTIC), role="decomposer", deadline=pool.until(0.25))
    subs = prompts.parse_subquestions(plan.text, params["parts"])
    pool.end_step(plan.step, answer=f"{len(subs)} sub-questions")
    pairs: list[tuple[str, str]] = []
    if subs:
        routes = await _route_each(pool, subs)
        asks = [Ask(messages=prompts.plain(s), max_tokens=params["sub_tokens"]) for s in subs]
        answers = await fan_out_indexed(pool, routes, asks, role="sub-answer", round=1,
                                        k_min=max(1, len(subs) - 1), grace_s=params["grace_s"],
                                        deadline=pool.until(0.6))
        pairs = [(subs[i], answers[i].text) for i in sorted(answers)]
    if not pairs:  # nothing to compose: the question as asked, streamed
        final = await pool.generate(best[: pool.max_attempts], Ask.of(query), role="composer", round=2, stream=True)
        return Answer(final.text, f"{len(subs)} sub-question(s), none answered; {final.route.candidate.record.name} "
                      "answered the question", (final.step,), final.finish_reason)
    # Not streamed: a composition that is no answer (validity.py) is replaced by a plain one.
    final = await pool.generate(best[: pool.max_attempts], Ask(messages=prompts.compose(q, pairs),
                                                               temperature=DETERMINISTIC), role="composer", round=2)
    why = f"{len(subs)} sub-question(s), {len(pairs)} answered; composed by {final.route.candidate.record.name}"
    return await answer_plainly_if_invalid(pool, query, final, best, why)
