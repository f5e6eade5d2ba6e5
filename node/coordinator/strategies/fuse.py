"""``fuse``: token-level fusion of k experts that share a tokenizer, through generation sessions.

Every expert holds a session on the question (its own adapter, its own chat
template: sessions live in the expert, node/expert/serve/sessions.py); each step
the strategy merges their next-token distributions (fusion.py), picks the
token (greedy, or at the query's temperature with its seed) and feeds it to
every session: one token on the wire per expert per step, never the prompt
again.  The text comes back from the experts (detokenized in context; they
share the tokenizer), so the coordinator needs no tokenizer of its own.

An expert that fails (at open or mid-answer) leaves the fusion (its step is
marked failed in the trace); the next expert of the same tokenizer, if any,
stands in and replays the tokens so far; without one the others finish with
the weights renormalized.  The answer fails only when every expert is gone.  Each member's trace step
carries the tokens it was fed and its signed receipt.
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from typing import Any

import trio

from protocol import QueryRequest, SessionNext

from ..calls import Ask, QueryFailed, StepFailed
from ..fusion import Distribution, NoSharedTokenizer, choose, fusable_group, merge
from ..pool import Pool
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
        everyone = fusable_group(routes, max(2, len(routes)), tokenizer_of=lambda r: r.candidate.record.tokenizer)
    except NoSharedTokenizer as exc:
        raise QueryFailed("unavailable", str(exc)) from None
    group, reserves = everyone[: params["k"]], everyone[params["k"]:]  # reserves stand in for failed members
    top_k, sampling = params["top_k"], query.sampling
    ask = Ask.of(query)
    async with AsyncExitStack() as stack:
        members: dict[int, Any] = {}  # position in the group -> PoolSession (kept in rank order)
        nexts: dict[int, SessionNext] = {}
        failed_at: dict[int, int] = {}  # position -> trace step of the member that failed there

        async def open_one(i: int) -> None:
            try:
                members[i] = await stack.enter_async_context(pool.session(group[i], ask, top_k=top_k, role="fuser"))
                nexts[i] = members[i].first
            except StepFailed:
                failed_at[i] = len(pool.steps) - 1  # recorded in the trace; a reserve may stand in

        async with trio.open_nursery() as nursery:  # every expert prefills at once
            for i in range(len(group)):
                nursery.start_soon(open_one, i)
        tokens: list[int] = []
        await _stand_in(pool, stack, ask, reserves, members, nexts, failed_at, tokens, top_k)
        if not members:
            raise QueryFailed("unavailable", "no expert of the fusion group could open a session")
        eos = frozenset(t for s in members.values() for t in s.first.eos_token_ids)
        rng = random.Random(sampling.seed)
        text, finish = "", "length"
        while len(tokens) < sampling.max_new_tokens:
            live = sorted(members)
            token = choose(merge([Distribution(nexts[i].token_ids, nexts[i].logprobs) for i in live]),
                           temperature=sampling.temperature, rng=rng)
            if token in eos:
                finish = "stop"
                break
            tokens.append(token)
            for i, gone in await _feed(members, nexts, token, top_k):
                failed_at[i] = gone.index
            steady = [i for i in members if i not in failed_at]  # their reply's text is exactly this token's
            why = "; ".join(pool.steps[i].error for i in failed_at.values())
            await _stand_in(pool, stack, ask, reserves, members, nexts, failed_at, tokens, top_k)
            if not members:
                raise QueryFailed("unavailable", f"every fused expert failed mid-answer ({why})")
            if steady:
                piece = nexts[min(steady)].text
            else:  # only stand-ins left: their reply holds the text of every token replayed
                whole = nexts[min(members)].text
                piece = whole.removeprefix(text)
            text, piece, stopped = _apply_stop(text, piece, sampling.stop)
            await pool.stream_text(piece, members[min(members)].index)
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
    fusers = [s for s in pool.steps if s.call == "session" and s.role == "fuser"]
    names = ", ".join(s.expert + (f"/{s.adapter}" if s.adapter else "") for s in fusers if s.index in final)
    how = "greedy" if sampling.temperature == 0 else f"temperature {sampling.temperature:g}"
    lost = sum(1 for s in fusers if s.status == "failed")
    decision = (f"fused {len(final)} experts sharing {group[0].candidate.record.tokenizer} token by token "
                f"({names}; {how}, top-{top_k}); {len(tokens)} tokens"
                + (f"; {lost} failed and left the fusion" if lost else ""))
    return Answer(text, decision, final, finish)


async def _feed(members: dict[int, Any], nexts: dict[int, SessionNext], token: int,
                top_k: int) -> list[tuple[int, Any]]:
    """Append ``token`` to every session at once; failing experts leave ``members`` (returned by position)."""
    failed: list[int] = []

    async def one(i: int) -> None:
        try:
            nexts[i] = await members[i].append([token], top_k=top_k)
        except StepFailed:
            failed.append(i)

    async with trio.open_nursery() as nursery:
        for i in list(members):
            nursery.start_soon(one, i)
    return [(i, members.pop(i)) for i in failed]


async def _stand_in(pool: Pool, stack: AsyncExitStack, ask: Ask, reserves: list[Any], members: dict[int, Any],
                    nexts: dict[int, SessionNext], failed_at: dict[int, int], fed: list[int], top_k: int) -> None:
    """Give every empty position the next reserve expert, replaying the tokens fused so far.

    The stand-in's trace step ``continues`` the failed member's; the replay is one
    SessionAppend per 256 tokens (the message cap), so it costs a prefill, not a step per token.
    """
    for i in sorted(failed_at):
        if i in members:
            continue
        while reserves:
            route = reserves.pop(0)
            try:
                session = await stack.enter_async_context(pool.session(route, ask, top_k=top_k, role="fuser"))
                pool.end_step(session.index, continues=failed_at[i])
                reply = session.first
                for start in range(0, len(fed), 256):
                    reply = await session.append(fed[start:start + 256], top_k=top_k)
            except StepFailed:
                continue
            members[i], nexts[i] = session, reply
            break
    failed_at.clear()


def _apply_stop(text: str, piece: str, stop: tuple[str, ...]) -> tuple[str, str, bool]:
    """Append ``piece``; cut at the first stop string. Returns (text, new visible piece, stopped)."""
    combined = text + piece
    cuts = [i for i in (combined.find(s, max(0, len(text) - len(s) + 1)) for s in stop if s) if i >= 0]
    if not cuts:
        return combined, piece, False
    cut = min(cuts)
    return combined[:cut], combined[len(text):cut], True
