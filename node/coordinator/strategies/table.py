"""The table of strategies: what ``/v1/models`` lists as ``mosaic/<name>`` and ``node query --strategy`` accepts."""

from __future__ import annotations

from . import (
    cascade,
    debate,
    decompose,
    fuse,
    judge,
    knowledge,
    merge,
    moa,
    prompt_route,
    refine,
    route,
    select,
    vote,
)
from .base import Strategy

_FAN = "k generations"

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("route", route.run, "the best-matching expert answers; others are the failover order",
             "1 generation (+1 per failover)", route.PARAMS),
    Strategy("prompt-route", prompt_route.run, "the best expert reads the experts' descriptions and names one",
             "1 short generation + 1 generation", prompt_route.PARAMS),
    Strategy("vote", vote.run, "k diverse experts answer; the majority answer wins", _FAN, vote.PARAMS),
    Strategy("select", select.run, "k experts sample n answers each; the most self-consistent expert wins",
             "k*samples generations", select.PARAMS),
    Strategy("judge", judge.run, "k experts answer; a judge expert ranks the candidates",
             "k generations + k scores (loglik) or 2(k-1) short generations (pairwise)", judge.PARAMS),
    Strategy("moa", moa.run, "mixture of agents: proposers in layers, then an aggregator",
             "k*layers generations + 1", moa.PARAMS),
    Strategy("debate", debate.run, "rounds of mutual revision, then a vote (or summary)",
             "k*rounds generations (+1 with final=summary)", debate.PARAMS),
    Strategy("refine", refine.run, "rounds of mutual revision, then the best expert's summary",
             "k*rounds generations + 1", refine.PARAMS),
    Strategy("knowledge", knowledge.run, "k experts write knowledge cards; the best expert answers with them",
             "k short + k generations + 1", knowledge.PARAMS),
    Strategy("decompose", decompose.run, "split into sub-questions, each routed to its expert, then composed",
             "1 + parts + 1 generations", decompose.PARAMS),
    Strategy("cascade", cascade.run, "cheap to strong until the answer's mean token probability passes a threshold",
             "1 to max_steps generations + as many scores", cascade.PARAMS),
    Strategy("fuse", fuse.run, "k experts sharing a tokenizer write one answer token by token (merged next-token "
             "distributions)", "k sessions: 1 prefill + 1 one-token step per answer token each", fuse.PARAMS),
    Strategy("merge", merge.run, "peers' LoRA adapters of this node's base, merged (TIES/DARE/linear) into one "
             "adapter that this node's expert answers with", "1 merge (cached by content) + 1 generation",
             merge.PARAMS),
)}
