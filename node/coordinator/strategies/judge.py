"""``judge``: k experts propose; a judge expert ranks the candidates, by the log-likelihood it gives
each one (``score``, one forward each) or by pairwise comparison prompts; the best is returned."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import prompts
from ..calls import Ask, Reply, StepFailed
from ..pool import Pool
from ..quorum import fan_out
from .base import Answer, Param, fan_out_params, k_min_of

PARAMS = {**fan_out_params(3), "method": Param(str, "loglik", choices=("loglik", "pairwise"),
                                                help="how the judge ranks the candidates")}


async def _loglik(pool: Pool, judge, q: str, candidates: list[Reply]) -> int:
    best, best_score = 0, float("-inf")
    context = Ask(messages=prompts.judge_context(q))
    for i, reply in enumerate(candidates):
        if not reply.text.strip():
            continue
        try:
            logprobs = await pool.score(judge, context, reply.text, role="judge")
        except StepFailed:
            continue
        mean = sum(logprobs) / len(logprobs) if logprobs else float("-inf")
        pool.end_step(reply.step, score=round(mean, 4))
        if mean > best_score:
            best, best_score = i, mean
    return best


async def _pairwise(pool: Pool, judge, q: str, candidates: list[Reply]) -> int:
    """A single-elimination pass; each pair is asked in both orders so position bias cancels."""
    best = 0
    for challenger in range(1, len(candidates)):
        wins = 0
        for first, second, challenger_label in ((best, challenger, "B"), (challenger, best, "A")):
            ask = Ask(messages=prompts.pairwise(q, candidates[first].text, candidates[second].text),
                      max_tokens=4, temperature=0.0)
            try:
                reply = await pool.generate([judge], ask, role="judge")
            except StepFailed:
                continue
            verdict = prompts.parse_pairwise(reply.text)
            pool.end_step(reply.step, answer=verdict)
            wins += verdict == challenger_label
        if wins == 2:
            best = challenger
    return best


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    k = params["k"]
    routes = pool.pick(k)
    candidates = await fan_out(pool, routes, Ask.of(query), role="proposer", k_min=k_min_of(params, k),
                               grace_s=params["grace_s"], deadline=pool.until(0.6))
    ranked = pool.rank()
    proposers = {r.peer_id for r in routes}
    judge = next((r for r in ranked if r.peer_id not in proposers), ranked[0])
    q = prompts.question(query)
    if len(candidates) == 1:
        best = 0
    elif params["method"] == "loglik":
        best = await _loglik(pool, judge, q, candidates)
    else:
        best = await _pairwise(pool, judge, q, candidates)
    winner = candidates[best]
    why = (f"judge {judge.candidate.record.name} ({params['method']}) chose candidate {best + 1} of "
           f"{len(candidates)} by {winner.route.candidate.record.name}")
    return Answer(winner.text, why, (winner.step,), winner.finish_reason)
