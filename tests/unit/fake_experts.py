"""An in-memory expert pool for the strategy conformance suite: no network, no model.

Each fake expert answers from a fixed script (its ``answer``), recognises the
role prompts of coordinator/prompts.py (router, decomposer, pairwise judge) and
can misbehave the ways real peers do: refuse (``dead``), never answer
(``hang``, like a SIGSTOPped process), or die after some tokens (``die_after``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.lowlevel

import protocol as p
from node.expert.serve.local import ExpertError
from protocol.cid import RAW, cid_for_block


@dataclass
class FakeExpert:
    peer_id: str
    name: str
    answer: str
    description: str = ""
    tags: tuple[str, ...] = ()
    dead: bool = False
    hang: bool = False
    die_after: int | None = None  # chunks sent before the stream breaks
    delay: float = 0.0  # seconds per chunk
    logprob: float = -0.1  # per token, for score()
    seen: list[str] = field(default_factory=list)
    adapters: tuple[p.AdapterInfo, ...] = ()
    base_cid: str | None = None
    adapters_asked: list[str | None] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)  # each generate request's temperature
    aggregate: str | None = None  # what it writes when asked to aggregate or summarise (None: its answer)

    def record(self) -> p.CapabilityRecord:
        return p.CapabilityRecord(peer_id=self.peer_id, name=self.name, description=self.description,
                                  tags=self.tags, base_model="fake-135M", tokenizer="vocab-sha256:fake",
                                  base_model_cid=self.base_cid, adapters=self.adapters,
                                  seq=1, issued_at=0.0, ttl=3600.0)

    def reply_to(self, request: p.GenerateRequest) -> str:
        text = request.prompt or "\n".join(m.content for m in request.messages or ())
        if "Which expert" in text:
            return "2"
        if "Split the question" in text:
            return "1. What is six times seven?\n2. Is the product even?"
        if "Reply with A or B" in text:
            return "A"
        if self.aggregate is not None and "(some may be wrong)" in text:  # coordinator/prompts.py MAY_BE_WRONG
            return self.aggregate
        if request.messages and request.messages[-1].role == "assistant":  # continue a partial answer
            partial = request.messages[-1].content
            return self.answer[len(partial):] if self.answer.startswith(partial) else " " + self.answer
        return self.answer


class FakeTransport:
    """The pool's transport over a dict of fake experts; counts calls per peer."""

    def __init__(self, experts: list[FakeExpert]) -> None:
        self.experts = {e.peer_id: e for e in experts}
        self.calls: dict[str, int] = {}

    def records(self) -> list[p.CapabilityRecord]:
        return [e.record() for e in self.experts.values()]

    async def generate(self, peer_id: str, request: p.GenerateRequest) -> AsyncIterator[p.TokenChunk | p.GenerateResult]:
        expert = self.experts[peer_id]
        self.calls[peer_id] = self.calls.get(peer_id, 0) + 1
        expert.seen.append(request.messages[-1].content if request.messages else request.prompt or "")
        expert.adapters_asked.append(request.adapter)
        expert.temperatures.append(request.sampling.temperature)
        await trio.lowlevel.checkpoint()
        if expert.dead:
            raise ExpertError("unavailable", "expert stopped")
        if expert.hang:
            await trio.sleep_forever()
        words = expert.reply_to(request).split(" ")
        words = words[: request.sampling.max_new_tokens]
        sent = []
        for i, word in enumerate(words):
            if expert.die_after is not None and i >= expert.die_after:
                raise ExpertError("unavailable", "connection reset mid-answer")
            if expert.delay:
                await trio.sleep(expert.delay)
            piece = word if i == 0 else " " + word
            sent.append(piece)
            yield p.TokenChunk(request_id=request.request_id, index=i, text=piece, token_ids=(i + 1,))
        text = "".join(sent)
        reason = "length" if len(words) >= request.sampling.max_new_tokens else "stop"
        yield p.GenerateResult(request_id=request.request_id, text=text, finish_reason=reason,
                               usage=p.Usage(prompt_tokens=5, completion_tokens=len(words), seconds=0.01),
                               served_by="someone-else-entirely")  # never trusted for provenance

    async def score(self, peer_id: str, request: p.ScoreRequest, timeout: float) -> p.ScoreResult:
        expert = self.experts[peer_id]
        self.calls[peer_id] = self.calls.get(peer_id, 0) + 1
        if expert.dead:
            raise ExpertError("unavailable", "expert stopped")
        if expert.hang:
            await trio.sleep_forever()
        n = max(1, len(request.continuation.split()))
        # Candidates containing "42" are likelier to this judge.
        value = -0.05 if "42" in request.continuation else expert.logprob * 10
        return p.ScoreResult(request_id=request.request_id, token_ids=tuple(range(n)), logprobs=(value,) * n)

    @asynccontextmanager
    async def open_session(self, peer_id: str, request: p.SessionOpen, timeout: float) -> AsyncIterator[FakeSession]:
        expert = self.experts[peer_id]
        self.calls[peer_id] = self.calls.get(peer_id, 0) + 1
        await trio.lowlevel.checkpoint()
        if expert.dead:
            raise ExpertError("unavailable", "expert stopped")
        if expert.hang:
            await trio.sleep_forever()
        yield FakeSession(expert, request)

    async def next_token(self, peer_id: str, request: p.NextTokenRequest, timeout: float) -> p.NextTokenResult:
        return p.NextTokenResult(request_id=request.request_id, token_ids=(1, 2), logprobs=(-0.1, -2.5))


# Fake generation sessions (token-level fusion): a word is a token, one vocabulary for every fake expert.
EOS = 0
VOCAB: dict[str, int] = {}


def token_of(word: str) -> int:
    return VOCAB.setdefault(word, len(VOCAB) + 1)


def word_of(token: int) -> str:
    return next(w for w, t in VOCAB.items() if t == token)


class FakeSession:
    """Proposes the expert's own next word (p=0.7, else end of text); text of fed tokens comes back."""

    def __init__(self, expert: FakeExpert, request: p.SessionOpen) -> None:
        self.expert = expert
        self.request = request
        self.words = expert.reply_to(p.GenerateRequest(request_id="s", prompt=request.prompt,
                                                       messages=request.messages)).split(" ")
        self.fed: list[int] = []
        self.first = self._next("", eos=(EOS,))

    def _next(self, text: str, eos: tuple[int, ...] = ()) -> p.SessionNext:
        at = len(self.fed)
        if at < len(self.words):
            ids, probs = (token_of(self.words[at]), EOS), (0.7, 0.1)
        else:
            ids, probs = (EOS,), (0.7,)
        return p.SessionNext(session_id=self.request.session_id, position=5 + at, token_ids=ids,
                             logprobs=tuple(math.log(x) for x in probs), text=text, eos_token_ids=eos)

    async def append(self, token_ids, *, top_k=None) -> p.SessionNext:
        await trio.lowlevel.checkpoint()
        if self.expert.die_after is not None and len(self.fed) >= self.expert.die_after:
            raise ExpertError("unavailable", "connection reset mid-answer")
        if self.expert.delay:
            await trio.sleep(self.expert.delay)
        text = "".join(("" if not self.fed and i == 0 else " ") + word_of(t) for i, t in enumerate(token_ids))
        self.fed.extend(token_ids)
        return self._next(text)

    async def close(self) -> p.SessionClosed:
        return p.SessionClosed(session_id=self.request.session_id,
                               usage=p.Usage(prompt_tokens=5, completion_tokens=len(self.fed), seconds=0.01))


def team(**overrides: dict) -> list[FakeExpert]:
    """Four experts: three say 42 (in different words), one says 7."""
    experts = [
        FakeExpert("peer-a", "math-a", "The answer is 42.", "arithmetic and math word problems", ("math",)),
        FakeExpert("peer-b", "math-b", "I think it is 42", "numbers and algebra", ("math",)),
        FakeExpert("peer-c", "poet", "Seven, surely: 7", "poetry and creative writing", ("poetry",)),
        FakeExpert("peer-d", "geo", "42 is the result", "geography and capital cities", ("geography",)),
    ]
    for expert in experts:
        for key, value in overrides.get(expert.peer_id, {}).items():
            setattr(expert, key, value)
    return experts


# Adapter merging (the `merge` strategy): content ids are real CIDs of made-up bytes.
FAKE_BASE = str(cid_for_block(b"fake-135M base weights", codec=RAW))


def fake_cid(text: str) -> str:
    return str(cid_for_block(text.encode(), codec=RAW))


def with_adapters(experts: list[FakeExpert], base: str = FAKE_BASE) -> list[FakeExpert]:
    """Every expert advertises one LoRA adapter of ``base``, described like its expert."""
    for expert in experts:
        expert.base_cid = base
        expert.adapters = (p.AdapterInfo(name=f"{expert.name}-lora", cid=fake_cid(expert.peer_id),
                                         description=expert.description),)
    return experts


class FakeMerges:
    """The node's merge port over the fake pool: "merges" by recording the request, serves it on ``local``.

    The relevance is the real bag-of-words fallback; the merged CID is a CID of the
    request, so equal requests give equal CIDs, and a repeat is a cache hit.
    """

    def __init__(self, transport: FakeTransport, local: str | None, *, searched: tuple[float, ...] | None = None):
        from node.expert.model.merge import bag_similarity

        self._transport, self._local, self._searched = transport, local, searched
        self._similarity = bag_similarity
        self.prepared: list = []

    def local_base(self) -> str | None:
        local = self._transport.experts.get(self._local or "")
        return None if local is None else local.base_cid

    async def similarities(self, text: str, documents) -> list[float]:
        return [self._similarity(text, d) for d in documents]

    async def searched_weights(self, refs, method: str):
        return self._searched

    async def prepare(self, request):
        from node.coordinator.merge_port import MergedAdapter

        cid = fake_cid(repr((request.refs, request.weights, request.method, request.density)))
        cached = any(r == request for r in self.prepared)
        self.prepared.append(request)
        local = self._transport.experts[self._local]
        name = f"merged-{cid[-12:]}"
        if all(a.name != name for a in local.adapters):
            local.adapters += (p.AdapterInfo(name=name, cid=cid),)
        await trio.lowlevel.checkpoint()
        return MergedAdapter(name=name, cid=cid, base=local.base_cid or "", cached=cached, loaded=not cached,
                             seconds=0.0)
