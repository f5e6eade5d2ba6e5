"""``fuse``: token-level fusion of k experts that share a tokenizer, through generation sessions.

Every expert holds a session on the question (its own adapter, its own chat
template: sessions live in the expert, node/expert/sessions.py); each step
the strategy merges their next-token distributions (fusion.py), picks the
token (greedy, or at the query's temperature with its seed) and feeds it to
every session: one token on the wire per expert per step, never the prompt
again.  The text comes back from the experts (detokenized in context; they
share the tokenizer), so the coordinator needs no tokenizer of its own.

An expert that fails mid-answer leaves the fusion (its step is marked failed
in the trace) and the others finish with the weights renormalized; the
answer fails only when every expert is gone.  Each member's trace step
carries the tokens it was fed and its signed receipt.
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from typing import Any

import trio

from protocol import QueryRequest, SessionNext

from ..fusion import Distribution, NoSharedTokenizer, choose, fusable_group, merge
from ..pool import Ask, Pool, QueryFailed, StepFailed
from .base import Answer, Param

PARAMS = {
    "k": Param(int, 2, 2, 8, help="experts fused (distinct peers that share a tokenizer)"),
    "top_k": Param(int, 20, 1, 256, help="next-token candidates each expert returns per step"),
}


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    routes = pool.rank()
    if not routes:
        raise QueryFailed("unavailable", "no expert is known to this node")
    try:
        group = fusable_group(routes, params["k"], tokenizer_of=lambda r: r.candidate.record.tokenizer)
    except NoSharedTokenizer as exc:
        raise QueryFailed("unavailable", str(exc)) from None
    top_k, sampling = params["top_k"], query.sampling
    ask = Ask.of(query)
    async with AsyncExitStack() as stack:
        members: dict[int, Any] = {}  # position in the group -> PoolSession (kept in rank order)

        async def open_one(i: int) -> None:
            try:
                members[i] = await stack.enter_async_context(pool.session(group[i], ask, top_k=top_k, role="fuser"))
            except StepFailed:
                pass  # recorded in the trace; the others go on

        async with trio.open_nursery() as nursery:  # every expert prefills at once
            for i in range(len(group)):
                nursery.start_soon(open_one, i)
        if not members:
            raise QueryFailed("unavailable", "no expert of the fusion group could open a session")
        nexts: dict[int, SessionNext] = {i: s.first for i, s in members.items()}
        eos = frozenset(t for s in members.values() for t in s.first.eos_token_ids)
        rng = random.Random(sampling.seed)
        tokens: list[int] = []
        text, finish = "", "length"
        while len(tokens) < sampling.max_new_tokens:
            live = sorted(members)
            token = choose(merge([Distribution(nexts[i].token_ids, nexts[i].logprobs) for i in live]),
                           temperature=sampling.temperature, rng=rng)
            if token in eos:
                finish = "stop"
                break
            tokens.append(token)
            gone = await _feed(members, nexts, token, top_k)
            if not members:
                why = "; ".join(f"{s.peer_id[-8:]}: {pool.steps[s.index].error}" for s in gone)
                raise QueryFailed("unavailable", f"every fused expert failed mid-answer ({why})")
            first = min(members)
            text, piece, stopped = _apply_stop(text, nexts[first].text, sampling.stop)
            await pool.stream_text(piece, members[first].index)
            if stopped:
                finish = "stop"
                break
        pool.add_usage(completion_tokens=len(tokens))
        for i in sorted(members):
            try:
                await members[i].close(text)
            except StepFailed:
                del members[i]
        final = tuple(members[i].index for i in sorted(members))
    names = ", ".join(r.candidate.record.name + (f"/{r.adapter}" if r.adapter else "") for r in group)
    how = "greedy" if sampling.temperature == 0 else f"temperature {sampling.temperature:g}"
    lost = len(group) - len(final)
    decision = (f"fused {len(group)} experts sharing {group[0].candidate.record.tokenizer} token by token "
                f"({names}; {how}, top-{top_k}); {len(tokens)} tokens" + (f"; {lost} left the fusion" if lost else ""))
    return Answer(text, decision, final, finish)


async def _feed(members: dict[int, Any], nexts: dict[int, SessionNext], token: int, top_k: int) -> list[Any]:
    """Append ``token`` to every session at once; a failing expert leaves ``members`` (and is returned)."""
    failed: list[int] = []

    async def one(i: int) -> None:
        try:
            nexts[i] = await members[i].append([token], top_k=top_k)
        except StepFailed:
            failed.append(i)

    async with trio.open_nursery() as nursery:
        for i in list(members):
            nursery.start_soon(one, i)
    return [members.pop(i) for i in failed]


def _apply_stop(text: str, piece: str, stop: tuple[str, ...]) -> tuple[str, str, bool]:
    """Append ``piece``; cut at the first stop string. Returns (text, new visible piece, stopped)."""
    combined = text + piece
    cuts = [i for i in (combined.find(s, max(0, len(text) - len(s) + 1)) for s in stop if s) if i >= 0]
    if not cuts:
        return combined, piece, False
    cut = min(cuts)
    return combined[:cut], combined[len(text):cut], True
