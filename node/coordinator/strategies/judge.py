"""``judge``: k experts propose; the candidates are ranked by likelihood and the best is returned.

``members`` (the default, likelihood selection): every proposer scores every distinct candidate
(``score``: the mean token log-probability of the candidate after the question, one forward each,
no sampling) and a candidate's value is the mean over the proposers, so no single expert's taste
decides; ``loglik``: one judge expert scores each candidate; ``pairwise``: a judge compares pairs
with a prompt (asked both ways, so position bias cancels)."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import competence, prompts
from ..calls import Ask, Reply, StepFailed
from ..pool import Pool
from ..quorum import fan_out
from .base import Answer, Param, fan_out_params, k_min_of

PARAMS = {**fan_out_params(3), "method": Param(str, "members", choices=("members", "loglik", "pairwise"),
                                                help="who ranks the candidates, and how")}


async def _members(pool: Pool, ask: Ask, candidates: list[Reply]) -> int:
    """Likelihood selection: the candidate the proposers find likeliest on average, each proposer
    weighted by its verified competence (competence.vote_weight: a proven expert's judgement counts
    more than that of two members sharing a mistake)."""
    scorers = list({(r.route.peer_id, r.route.adapter): r.route for r in candidates}.values())
    weight = {(s.peer_id, s.adapter): competence.vote_weight(s.candidate.dev_score) for s in scorers}
    best, best_value = 0, float("-inf")
    seen: dict[str, float] = {}  # the same text twice is scored once
    for i, reply in enumerate(candidates):
        text = reply.text.strip()
        if not text:
            continue
        if text not in seen:
            values = []
            for scorer in scorers:
                try:
                    logprobs = await pool.score(scorer, ask, reply.text, role="judge")
                except StepFailed:  # a scorer that cannot score (an expert without `score`) abstains
                    continue
                if logprobs:
                    values.append((weight[(scorer.peer_id, scorer.adapter)], sum(logprobs) / len(logprobs)))
            total = sum(w for w, _ in values)
            seen[text] = sum(w * v for w, v in values) / total if values else float("-inf")
        pool.end_step(reply.step, score=round(seen[text], 4) if seen[text] > float("-inf") else None)
        if seen[text] > best_value:
            best, best_value = i, seen[text]
    return best


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
    elif params["method"] == "members":
        best = await _members(pool, Ask.of(query), candidates)
    elif params["method"] == "loglik":
        best = await _loglik(pool, judge, q, candidates)
    else:
        best = await _pairwise(pool, judge, q, candidates)
    winner = candidates[best]
    who = "the proposers' mean likelihood" if params["method"] == "members" else \
        f"judge {judge.candidate.record.name} ({params['method']})"
    why = f"{who} chose candidate {best + 1} of {len(candidates)} by {winner.route.candidate.record.name}"
    return Answer(winner.text, why, (winner.step,), winner.finish_reason)
