"""One token-level fusion run over generation sessions on several experts.

The loop: every expert holds a session on the same prompt (its own adapter,
its own chat template); each step gathers their next-token distributions,
merges them (fusion.py), picks a token and feeds it to every session -- one
token on the wire per expert per step, not the whole prompt.  The text comes
back from the sessions themselves (detokenized in context by the experts,
who share the tokenizer), so the coordinator needs no tokenizer.

An expert that fails mid-run (error, timeout, lost stream) leaves the fusion;
the others carry on with the weights renormalized, and the member records
why.  Only when every expert is gone does the run fail.
"""

from __future__ import annotations

import random
import time
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import trio

from node.expert.local import ExpertError
from node.net.streams import StreamClosed
from protocol import ChatMessage, SessionNext, SessionOpen, SignedReceipt

from .fusion import Distribution, choose, merge

# Failures that remove one expert from the fusion (the rest go on).
MEMBER_ERRORS: tuple[type[BaseException], ...] = (ExpertError, StreamClosed, trio.TooSlowError)


@dataclass
class Member:
    """One expert in a fusion run: who, with what, and what it attested to."""

    peer_id: str
    adapter: str | None = None
    weight: float = 1.0
    expert: str = ""
    adapter_cid: str | None = None
    session: Any = None  # node.expert.session_client.ExpertSession while open
    receipt: SignedReceipt | None = None
    failed: str | None = None  # why it left the fusion, if it did
    opened_s: float = 0.0


@dataclass
class FusionOutcome:
    text: str
    token_ids: list[int]
    finish_reason: str  # stop | length
    prompt_tokens: int
    seconds: float
    members: list[Member] = field(default_factory=list)


OpenSession = Callable[[str, SessionOpen], AbstractAsyncContextManager[Any]]


class FusionFailed(Exception):
    """No expert is left to continue the fusion."""


async def fuse_tokens(
    open_session: OpenSession,
    members: Sequence[Member],
    *,
    session_id: str,
    prompt: str | None = None,
    messages: tuple[ChatMessage, ...] | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
    top_k: int = 20,
    stop: tuple[str, ...] = (),
    member_errors: tuple[type[BaseException], ...] = MEMBER_ERRORS,
    on_text: Callable[[str], Any] | None = None,
) -> FusionOutcome:
    """Fuse ``members`` token by token; ``on_text`` (sync or async) receives each new piece of text."""
    started = time.monotonic()
    rng = random.Random(seed)
    errors = member_errors
    request = SessionOpen(session_id=session_id, prompt=prompt, messages=messages, top_k=top_k)
    live: list[Member] = list(members)
    nexts: dict[int, SessionNext] = {}
    async with AsyncExitStack() as stack:

        async def open_one(index: int, member: Member) -> None:
            t0 = time.monotonic()
            try:
                member.session = await stack.enter_async_context(
                    open_session(member.peer_id, _with_adapter(request, member.adapter)))
                nexts[index] = member.session.first
                member.opened_s = time.monotonic() - t0
            except errors as exc:
                member.failed = f"open: {_describe(exc)}"

        async with trio.open_nursery() as nursery:  # prefill on every expert at once
            for i, m in enumerate(live):
                nursery.start_soon(open_one, i, m)
        alive = [i for i in range(len(live)) if live[i].failed is None]
        if not alive:
            raise FusionFailed("no expert could open a session: " + "; ".join(f"{m.peer_id[-8:]}: {m.failed}" for m in live))
        eos = frozenset(t for i in alive for t in nexts[i].eos_token_ids)
        prompt_tokens = max(nexts[i].position for i in alive)
        token_ids: list[int] = []
        text = ""
        finish = "length"
        for _ in range(max_new_tokens):
            merged = merge([Distribution(nexts[i].token_ids, nexts[i].logprobs) for i in alive],
                           [live[i].weight for i in alive])
            token = choose(merged, temperature=temperature, rng=rng)
            if token in eos:
                finish = "stop"
                break
            token_ids.append(token)
            await _step(live, alive, nexts, token, top_k, errors, len(token_ids))
            alive = [i for i in alive if live[i].failed is None]
            if not alive:
                raise FusionFailed("every expert left the fusion: " + "; ".join(
                    f"{m.peer_id[-8:]}: {m.failed}" for m in live))
            piece = nexts[alive[0]].text  # same tokenizer everywhere: any live expert's text
            text, piece, stopped = _apply_stop(text, piece, stop)
            if piece and on_text is not None:
                shown = on_text(piece)
                if inspect.isawaitable(shown):
                    await shown
            if stopped:
                finish = "stop"
                break
        for i in alive:  # receipts come with the close
            try:
                closed = await live[i].session.close()
                live[i].receipt = closed.receipt
            except errors as exc:
                live[i].failed = f"close: {_describe(exc)}"
    return FusionOutcome(text=text, token_ids=token_ids, finish_reason=finish, prompt_tokens=prompt_tokens,
                         seconds=time.monotonic() - started, members=list(live))


async def _step(live: list[Member], alive: list[int], nexts: dict[int, SessionNext], token: int, top_k: int,
                errors: tuple[type[BaseException], ...], number: int) -> None:
    async def one(i: int) -> None:
        try:
            nexts[i] = await live[i].session.append([token], top_k=top_k)
        except errors as exc:
            live[i].failed = f"token {number}: {_describe(exc)}"

    async with trio.open_nursery() as nursery:
        for i in alive:
            nursery.start_soon(one, i)


def _apply_stop(text: str, piece: str, stop: tuple[str, ...]) -> tuple[str, str, bool]:
    """Append ``piece``; cut at the first stop string (returning only the part before it)."""
    combined = text + piece
    cuts = [i for i in (combined.find(s, max(0, len(text) - len(s))) for s in stop if s) if i >= 0]
    if not cuts:
        return combined, piece, False
    cut = min(cuts)
    return combined[:cut], combined[len(text):cut] if cut > len(text) else "", True


def _with_adapter(request: SessionOpen, adapter: str | None) -> SessionOpen:
    import msgspec

    return msgspec.structs.replace(request, adapter=adapter)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]

