"""Settling a free-form aggregate: keep it when it is a valid answer, else the members' majority.

moa's aggregator, a debate's summary (``refine``) and a composed answer are
written by one expert from the members' answers; small experts often write no
answer at all (validity.py).  ``settle`` checks the aggregate and, when it is
invalid, returns the majority of the members' own answers instead, marking the
aggregator's trace step (``error: invalid aggregate: ...``) and saying so in the
decision.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol import QueryRequest

from ..calls import Ask, Reply, StepFailed
from ..pool import Pool
from ..routing import Route
from ..validity import clear_majority, invalid_reason
from .base import Answer
from .vote import ballots_of, tally


def settle(pool: Pool, aggregate: Reply, members: Sequence[Reply], *, why: str, kind: str = "auto",
           trust_majority: bool = True) -> Answer:
    """The aggregate as the answer, or the members' majority when the aggregate is invalid."""
    shape = None if kind == "auto" else kind
    agreed = clear_majority(ballots_of(list(members), kind)) if trust_majority else None
    reason = invalid_reason(aggregate.text, agreed=agreed, kind=shape)
    if reason is None:
        return Answer(aggregate.text, why, (aggregate.step,), aggregate.finish_reason)
    pool.end_step(aggregate.step, error=f"invalid aggregate: {reason}")
    answered = [m for m in members if invalid_reason(m.text) is None] or [m for m in members if m.text.strip()]
    if not answered:
        return Answer(aggregate.text, f"{why}; the aggregate looks invalid ({reason}) and no member answered",
                      (aggregate.step,), aggregate.finish_reason)
    winner, decision = tally(pool, list(answered), kind)
    return Answer(winner.text, f"{why}; aggregate rejected ({reason}): fell back to the members' majority "
                  f"{decision.winner!r} ({decision.share:.0%} of the votes)", (winner.step,),
                  winner.finish_reason)


async def answer_plainly_if_invalid(pool: Pool, query: QueryRequest, final: Reply, answerers: Sequence[Route],
                                    why: str) -> Answer:
    """``final`` when it is a valid answer, else the best expert's plain answer to the question.

    For strategies whose final writer had no member answers to fall back on (knowledge cards,
    decomposition): their helpers' texts are context, not answers.
    """
    reason = invalid_reason(final.text)
    if reason is None:
        return Answer(final.text, why, (final.step,), final.finish_reason)
    pool.end_step(final.step, error=f"invalid answer: {reason}")
    try:
        plain = await pool.generate(list(answerers)[: pool.max_attempts], Ask.of(query), role="fallback", round=9)
    except StepFailed:
        return Answer(final.text, f"{why}; the answer looks invalid ({reason}) and the plain retry failed",
                      (final.step,), final.finish_reason)
    return Answer(plain.text, f"{why}; rejected ({reason}): {plain.route.candidate.record.name} answered "
                  "the question plainly", (plain.step,), plain.finish_reason)
