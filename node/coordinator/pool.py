"""The one I/O port of the collaboration engine: every call a strategy makes to an expert goes here.

A :class:`Pool` lives for one query.  It knows the experts (the registry's
records, scored by ``routing`` with this node's decaying ``health``), talks to
them through a :class:`Transport` (``/mosaic/infer/1`` in a node, in-memory
in the conformance tests), and keeps the bookkeeping every strategy needs:
the trace (one :class:`TraceStep` per call, with the peer it really streamed
from), provenance, token usage and the deadlines.

Strategies only decide; the pool handles what goes wrong:
- a silent expert: its first token (and every later one) must come within an
  adaptive budget, else the step fails instead of eating the query's time; a
  busy expert that reports its queue position (``Queued``) is alive, and each
  report restarts that budget (:func:`alive_but_waiting`); an expert also sends
  ``Queued(started=True)`` keep-alives while its forward pass runs (a long
  prefill, a slow decode step).  Keep-alives hold a step only while the request
  makes progress at the rate measured for that expert (patience.py): a tarpit
  that sends nothing but keep-alives fails over and is penalised (issue 22);
- a failure before the first token: the next expert of the failover list;
- a failure after tokens: the next expert continues from the partial text, so a
  streaming client sees one answer (``Ask.continued``), the trace links the steps;
- fan-out: ``quorum.fan_out`` returns once ``k_min`` replies are in plus a grace
  period, late or dead experts never block.

Hooks for the token-level work (fusion, receipts): :meth:`Pool.begin_step` /
:meth:`Pool.end_step` record any other call in the trace (``call="next_token"``,
``receipt=...``); :meth:`Pool.next_token` and :meth:`Pool.score` are the
single-forward calls.  See docs/collaboration.md, "Extending the engine".
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from typing import TypeVar, get_args

import msgspec
import trio

from protocol import (
    MAX_STEPS,
    CapabilityRecord,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    NextTokenResult,
    Provenance,
    QueryRequest,
    QueryResult,
    SamplingParams,
    ScoreRequest,
    TokenChunk,
    Trace,
)
from protocol.receipts import prompt_digest
from protocol.verify import encode_receipt

from .calls import CLIENT_ERRORS, Ask, QueryFailed, Reply, StepFailed, Transport, alive_but_waiting, failure_code
from .competence import Observed, competences
from .health import Health, finite
from .ledger import TraceLedger
from .merge_port import MergePort
from .patience import QueueWait, patience_s
from .routing import (
    Candidate,
    Need,
    NoExpertAvailable,
    Route,
    diverse,
    rank,
)
from .session_port import PoolSession, open_pool_session

T = TypeVar("T")  # what a single call (score, next token) returns

# Floor of the adaptive per-token budget (see Pool.token_budget).
MIN_TOKEN_BUDGET = 3.0
# Distinct experts this node has not verified (no live connection, no dial or answer of
# theirs within registry.VERIFIED_FOR) that one query may call: keys are free, so a record
# names a peer that may not exist; past this budget only verified experts (and unverified
# ones already tried in this query) are asked (issue 22, attack 2).
MAX_UNVERIFIED_ATTEMPTS = 4
# Share of the query's remaining time an expert may hold a step without progress when this node has
# measured no expert's rate yet (patience.py): a tarpit then still leaves time to fail over.
UNMEASURED_SHARE = 0.5

Emit = Callable[[str, Provenance], Awaitable[None]]


class _Partial(Exception):
    """An expert failed after producing ``text``: failover continues from it."""

    def __init__(self, code: str, message: str, text: str, tokens: int, step: int) -> None:
        super().__init__(message)
        self.code, self.message, self.text, self.tokens, self.step = code, message, text, tokens, step


class Pool(TraceLedger):
    """One query's view of the experts, with its trace, usage and deadlines (the ledger)."""

    def __init__(self, query: QueryRequest, records: Callable[[], Iterable[CapabilityRecord]], transport: Transport,
                 health: Health, *, first_token_timeout: float = 20.0, max_attempts: int = 3,
                 relevance: Callable[[str, list[CapabilityRecord]], Awaitable[dict[str, float]]] | None = None,
                 emit: Emit | None = None, verified: Callable[[], set[str]] = set, local_id: str | None = None,
                 demoted: Callable[[str], bool] = lambda peer_id: False, merges: MergePort | None = None,
                 trust: Callable[[str], float] = lambda peer_id: 0.0, observed: Observed | None = None,
                 checked_tasks: Callable[[], Iterable[str]] = tuple) -> None:
        super().__init__(query)
        self.merges = merges  # the node's adapter merging (the `merge` strategy), None where it has none
        self._records = records
        self._verified = verified  # peers this node verified are reachable (rank first: issue 12)
        self._local_id = local_id
        self._demoted = demoted  # caught lying by spot checks (reputation.py): ranked like a ban
        self.trust = trust  # evidence a peer answers right (reputation.trust): what breaks a vote's tie
        self._observed = observed  # spot-check evidence per (peer, task): verified competence (competence.py)
        self._checked_tasks = checked_tasks
        self._transport = transport
        self.path_of = getattr(transport, "path", None)  # direct / relayed per trace step (issue 20)
        self.health = health
        self._first_token_timeout = first_token_timeout
        self.max_attempts = max_attempts
        self._relevance = relevance
        self._emit = emit
        self.emitted = False  # some text already went to the client
        self.unverified_tried: set[str] = set()  # unverified experts called so far (MAX_UNVERIFIED_ATTEMPTS)

    # ------------------------------------------------------------------ choosing experts

    def candidates(self) -> list[Candidate]:
        return candidates_of(self._records(), self.health, verified=self._verified(), local_id=self._local_id,
                             demoted=self._demoted, tags=self.query.tags, observed=self._observed,
                             checked_tasks=self._checked_tasks())

    def rank(self, need: Need | None = None, *, exclude: Iterable[str] = (),
             relevance: dict[str, float] | None = None) -> list[Route]:
        """Every usable expert, best first (the failover order); pinned models narrow it."""
        need = need or Need(tags=self.query.tags, model=self.query.model)
        try:
            return rank(self.candidates(), need, exclude=exclude, relevance=relevance)
        except NoExpertAvailable as exc:
            raise QueryFailed("not_found", str(exc)) from None

    def pick(self, k: int, need: Need | None = None, *, relevance: dict[str, float] | None = None) -> list[Route]:
        """Up to ``k`` experts on distinct peers, best first; raises when there is none at all."""
        routes = self.within_unverified_budget(self.rank(need, relevance=relevance))
        if not routes:
            raise QueryFailed("unavailable", "no expert is known to this node")
        # A demoted expert (reputation.py) is left out of a fan-out while two others can answer:
        # ranking it last is not enough when k covers every expert (a vote of all four).
        trusted = diverse([r for r in routes if not r.candidate.demoted], k)
        return trusted if len(trusted) >= min(k, 2) else diverse(routes, k)

    def within_unverified_budget(self, routes: Sequence[Route]) -> list[Route]:
        """``routes`` less the unverified experts past what is left of :data:`MAX_UNVERIFIED_ATTEMPTS`."""
        newcomers = set(self.unverified_tried)
        out = []
        for route in routes:
            if not route.candidate.verified and route.peer_id not in newcomers:
                if len(newcomers) >= MAX_UNVERIFIED_ATTEMPTS:
                    continue
                newcomers.add(route.peer_id)
            out.append(route)
        return out

    def may_try(self, route: Route) -> bool:
        """Charge a call to ``route`` against the unverified budget; ``False`` when it is spent."""
        if route.candidate.verified or route.peer_id in self.unverified_tried:
            return True
        if len(self.unverified_tried) >= MAX_UNVERIFIED_ATTEMPTS:
            return False
        self.unverified_tried.add(route.peer_id)
        return True

    async def relevance(self, text: str) -> dict[str, float]:
        """Semantic similarity of ``text`` to each expert's self-description (empty without an embedder)."""
        if self._relevance is None:
            return {}
        records = list(self._records())
        # Embedding costs CPU per description: only verified experts' (they rank first anyway),
        # or a flood of unverified records would make every query embed hundreds (issue 12).
        verified = self._verified() | {self._local_id}
        return await self._relevance(text, [r for r in records if r.peer_id in verified] or records)

    # ------------------------------------------------------------------ budgets

    def token_budget(self, route: Route) -> float:
        """How long to wait for an expert's next token (the first one included) before giving up on it.

        A peer that vanished without closing its connection (paused, in-process
        stop, network cut) leaves py-libp2p's stream open for ~10 s of
        multistream negotiation (measured), so waiting the whole deadline would
        stall the query.  Once we have seen this expert answer, we allow a
        generous multiple of its observed (not decayed) time to first token.
        """
        latency = self.health.raw_latency(route.peer_id)
        if latency is None:
            return self._first_token_timeout
        return min(self._first_token_timeout, max(MIN_TOKEN_BUDGET, 4 * latency + 2.0))

    def patience(self, route: Route) -> float:
        """Seconds to wait on ``route``'s expert without progress (a queue that does not move, patience.py)."""
        rate = self.health.rate(route.peer_id) or self.health.typical_rate()
        unmeasured = max(self._first_token_timeout, UNMEASURED_SHARE * self.remaining())
        return patience_s(rate, self.query.sampling.max_new_tokens, unmeasured)

    # ------------------------------------------------------------------ calls

    async def generate(self, routes: Sequence[Route], ask: Ask, *, role: str, round: int = 0,
                       stream: bool = False, deadline: float | None = None, wait_last: bool = True) -> Reply:
        """One answer from the first expert of ``routes`` that gives one; the rest are the failover order.

        ``stream``: this step writes the final answer, so its text goes to the
        client as it comes.  A failure after tokens continues on the next expert
        from the partial text (recorded as ``continues`` in the trace).
        ``wait_last``: the last expert of the list is the last resort, so a queue
        that reports itself alive is waited on to the deadline (failing over needs
        somewhere to go); a fan-out, which has its other members, passes False.
        """
        deadline = min(self.deadline if deadline is None else deadline, self.deadline)
        max_tokens = ask.max_tokens or self.query.sampling.max_new_tokens
        partial, tokens, continues = "", 0, None
        errors: list[str] = []
        codes: set[str] = set()
        tried = list(routes)[: self.max_attempts]
        for position, route in enumerate(tried):
            if trio.current_time() >= deadline:
                break
            if not self.may_try(route):
                errors.append(f"{route.peer_id[-8:]}: not tried: {MAX_UNVERIFIED_ATTEMPTS} unverified experts "
                              "already tried for this query")
                codes.add("unavailable")
                continue
            step_ask = ask.continued(partial) if partial else ask
            # Patience (patience.py) only where failing over helps: not on this node's own expert
            # (we run it: a full queue is real) nor on the last resort.
            bounded = not route.candidate.local and not (wait_last and position == len(tried) - 1)
            try:
                reply = await self._stream_one(route, step_ask, max_tokens - tokens, role=role, round=round,
                                               stream=stream, deadline=deadline, continues=continues,
                                               bounded=bounded)
            except _Partial as exc:
                partial, tokens, continues = partial + exc.text, tokens + exc.tokens, exc.step
                errors.append(f"{route.peer_id[-8:]}: {exc.code} after {exc.tokens} tokens: {exc.message}")
                codes.add(exc.code)
                if tokens >= max_tokens:
                    return Reply(route, partial, "length", tokens, exc.step)
                continue
            except StepFailed as exc:
                if exc.code in CLIENT_ERRORS:
                    raise
                errors.append(f"{route.peer_id[-8:]}: {exc.code}: {exc.message}")
                codes.add(exc.code)
                continue
            return Reply(route, partial + reply.text, reply.finish_reason, tokens + reply.tokens, reply.step)
        if not errors:
            raise StepFailed("timeout" if routes else "unavailable",
                             "no time left for this step" if routes else "no expert to ask")
        code = "busy" if codes == {"busy"} else ("timeout" if codes == {"timeout"} else "unavailable")
        raise StepFailed(code, "every expert tried failed: " + "; ".join(errors))

    async def _stream_one(self, route: Route, ask: Ask, max_tokens: int, *, role: str, round: int, stream: bool,
                          deadline: float, continues: int | None, bounded: bool = True) -> Reply:
        index = self.begin_step(route, role=role, round=round, input_text=ask.text(), continues=continues)
        # The digest the expert's receipt signs: the prompt exactly as sent (protocol/receipts.py).
        self.end_step(index, input_digest=prompt_digest(ask.prompt, ask.messages))
        sampling = self.query.sampling
        sampling = msgspec.structs.replace(
            sampling, max_new_tokens=max(1, max_tokens),
            temperature=sampling.temperature if ask.temperature is None else ask.temperature,
            seed=sampling.seed if ask.seed is None else ask.seed)
        request = self._request(index, route, ask, sampling, deadline)
        provenance = self.provenance(index)
        budget = self.token_budget(route)
        began = trio.current_time()
        # Keep-alives prove life, not progress: the wait without progress is bounded (patience.py).
        wait = QueueWait(self.patience(route) if bounded else math.inf, began)
        first: float | None = None
        text: list[str] = []
        tokens = 0
        try:
            async with aclosing(self._transport.generate(route.peer_id, request)) as events:
                while True:
                    until = min(trio.current_time() + budget, deadline)
                    with trio.move_on_at(min(until, wait.gives_up_at())) as scope:
                        message = await events.__anext__()
                    if scope.cancelled_caught:
                        now = trio.current_time()
                        if now >= wait.gives_up_at() and now < until:
                            raise StepFailed("timeout", wait.why(now))
                        raise StepFailed("timeout", f"no token or queue report within {budget:.1f} s"
                                         if first is None else f"stalled for {budget:.1f} s mid-answer")
                    wait.heard = wait.heard or trio.current_time()
                    if alive_but_waiting(message):
                        wait.report(message, trio.current_time())  # type: ignore[arg-type]
                        continue
                    wait.progress(trio.current_time())
                    if first is None:
                        first = trio.current_time() - began
                        self.health.success(route.peer_id, first)
                    if isinstance(message, TokenChunk):
                        tokens += max(1, len(message.token_ids)) if message.text or message.token_ids else 0
                        if message.text:
                            text.append(message.text)
                            if stream and self._emit is not None:
                                self.emitted = True
                                await self._emit(message.text, provenance)
                        continue
                    if isinstance(message, GenerateResult):
                        # The generation's time from the expert's first word (not the dial): the rate.
                        self.health.finished(route.peer_id, trio.current_time() - (wait.heard or began),
                                             message.usage.completion_tokens)
                        self.add_usage(prompt_tokens=message.usage.prompt_tokens,
                                       completion_tokens=message.usage.completion_tokens)
                        self.end_step(index, status="ok", output=message.text, first_token_s=first,
                                      seconds=finite(trio.current_time() - began),
                                      tokens=message.usage.completion_tokens,
                                      receipt=encode_receipt(message.receipt) if message.receipt else None)
                        return Reply(route, message.text, message.finish_reason, message.usage.completion_tokens,
                                     index)
        except StopAsyncIteration:
            failure: tuple[str, str] = ("internal", "expert closed the stream without a result")
        except StepFailed as exc:
            failure = (exc.code, exc.message)
        except trio.Cancelled:
            self.end_step(index, status="late", output="".join(text), first_token_s=first, tokens=tokens,
                          seconds=finite(trio.current_time() - began))
            raise
        except Exception as exc:  # the infer client's typed errors, transport errors
            failure = (failure_code(exc), str(exc) or type(exc).__name__)
        code, reason = failure
        if code not in CLIENT_ERRORS:
            self.health.failure(route.peer_id)
        self.end_step(index, status="failed", error=f"{code}: {reason}", output="".join(text),
                      first_token_s=first, tokens=tokens, seconds=finite(trio.current_time() - began))
        self.add_usage(completion_tokens=tokens)
        if text:
            raise _Partial(code, reason, "".join(text), tokens, index)
        raise StepFailed(code, reason)

    def _request(
        self, index: int, route: Route, ask: Ask, sampling: SamplingParams, deadline: float
    ) -> GenerateRequest:
        return GenerateRequest(request_id=self.step_request_id(index), prompt=ask.prompt, messages=ask.messages,
                               adapter=route.adapter, sampling=sampling,
                               timeout_s=min(3600.0, max(1.0, deadline - trio.current_time())), stream=True,
                               progress=True)  # a busy expert reports its queue position instead of going silent

    async def score(self, route: Route, ask: Ask, continuation: str, *, role: str, round: int = 0,
                    deadline: float | None = None) -> list[float]:
        """Per-token log-probabilities of ``continuation`` after the ask, by ``route``'s expert."""
        index = self.begin_step(route, role=role, round=round, call="score", input_text=ask.text() + continuation)
        request = ScoreRequest(request_id=self.step_request_id(index), prompt=ask.prompt, messages=ask.messages,
                               continuation=continuation[:64 * 1024], adapter=route.adapter)
        result = await self._single(index, route, deadline,
                                    lambda timeout: self._transport.score(route.peer_id, request, timeout))
        logprobs = list(result.logprobs)
        self.end_step(index, tokens=len(logprobs), score=sum(logprobs) / len(logprobs) if logprobs else None)
        return logprobs

    async def next_token(self, route: Route, ask: Ask, *, top_k: int = 20, role: str, round: int = 0,
                         deadline: float | None = None) -> NextTokenResult:
        """Top-k next-token log-probabilities after the ask (one forward, no session)."""
        index = self.begin_step(route, role=role, round=round, call="next_token", input_text=ask.text())
        request = NextTokenRequest(request_id=self.step_request_id(index), prompt=ask.prompt, messages=ask.messages,
                                   adapter=route.adapter, top_k=top_k)
        return await self._single(index, route, deadline,
                                  lambda timeout: self._transport.next_token(route.peer_id, request, timeout))

    async def _single(self, index: int, route: Route, deadline: float | None,
                      call: Callable[[float], Awaitable[T]]) -> T:
        deadline = min(self.deadline if deadline is None else deadline, self.deadline)
        began = trio.current_time()
        timeout = max(0.5, deadline - began)
        try:
            with trio.fail_at(deadline):
                result = await call(timeout)
        except trio.Cancelled:
            self.end_step(index, status="late", seconds=finite(trio.current_time() - began))
            raise
        except Exception as exc:
            code = failure_code(exc)
            if code not in CLIENT_ERRORS:
                self.health.failure(route.peer_id)
            self.end_step(index, status="failed", error=f"{code}: {exc}", seconds=finite(trio.current_time() - began))
            raise StepFailed(code, str(exc) or type(exc).__name__) from None
        self.health.success(route.peer_id, trio.current_time() - began)
        self.end_step(index, status="ok", seconds=finite(trio.current_time() - began))
        return result

    async def stream_text(self, text: str, index: int) -> None:
        """Send ``text`` of the final answer to the client now, credited to step ``index``'s expert."""
        if text and self._emit is not None:
            self.emitted = True
            await self._emit(text, self.provenance(index))

    def session(self, route: Route, ask: Ask, *, top_k: int, role: str, round: int = 0
                ) -> AbstractAsyncContextManager[PoolSession]:
        """A generation session on ``route``'s expert (token-level fusion): a trace step with its receipt."""
        return open_pool_session(self, self._transport, self.health, route, ask, budget=self.token_budget(route),
                                 top_k=top_k, role=role, round=round)

    # ------------------------------------------------------------------ the result

    def result(self, text: str, finish_reason: str, *, decision: str, final: Sequence[int] = (),
               params: dict | None = None) -> QueryResult:
        """The QueryResult: provenance lists the final steps' experts first, then every other contributor."""
        order = list(final) + [s.index for s in self.steps if s.index not in final]
        seen: set[tuple[str, str | None, str]] = set()
        provenance: list[Provenance] = []
        for index in order:
            step = self.steps[index]
            key = (step.peer, step.adapter, step.role)
            if (step.status == "ok" or index in final or step.output) and key not in seen and len(provenance) < 64:
                seen.add(key)
                provenance.append(self.provenance(index))
        kept = self.steps[:MAX_STEPS]
        trace = Trace(request_id=self.query.request_id, strategy=self.query.strategy, params=params or {},
                      steps=tuple(kept), decision=decision[:1024], dropped_steps=len(self.steps) - len(kept))
        usage = self.usage()
        reason = finish_reason if finish_reason in get_args(FinishReason) else "stop"
        return QueryResult(request_id=self.query.request_id, text=text, finish_reason=reason,  # type: ignore[arg-type]
                           usage=usage, strategy=self.query.strategy, provenance=tuple(provenance), trace=trace)


def candidates_of(records: Iterable[CapabilityRecord], health: Health, *, verified: set[str],
                  local_id: str | None, demoted: Callable[[str], bool], tags: Sequence[str] = (),
                  observed: Observed | None = None, checked_tasks: Iterable[str] = ()) -> list[Candidate]:
    """Each record with this node's observations of it: latency, failures, bans, demotion, reachability.

    ``demoted`` is asked once per peer: it weighs every peer's evidence (reputation.py).
    ``tags`` name the query's tasks; each candidate's ``dev_score`` is its verified accuracy on
    them (competence.py: its signed claim and this node's spot checks, ``observed``), or its
    generalist competence when nobody has shown any on them.
    """
    records = list(records)
    shown = competences(records, tags, observed, checked_tasks)
    out = []
    for r in records:
        lying = demoted(r.peer_id)
        out.append(Candidate(r, health.latency(r.peer_id), health.failures(r.peer_id),
                             health.banned(r.peer_id) or lying, demoted=lying,
                             verified=r.peer_id in verified or r.peer_id == local_id,
                             local=r.peer_id == local_id, dev_score=shown.get(r.peer_id)))
    return out
