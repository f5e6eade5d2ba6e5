"""Generation sessions on the llama.cpp engine: a prompt's KV cells kept between steps.

Each session owns a sequence of the shared KV cache; a step appends its tokens at the
session's positions and returns the top-k of the full next-token distribution.  Policy
(who holds how many, idle expiry, receipts) stays on the trio side (sessions.py); the
operations and their replies are those of the torch engine's SessionStore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from protocol import SessionAppend, SessionClosed, SessionNext, SessionOpen, Usage

from ...errors import Busy, PromptTooLong, RequestRejected
from ..prompts import PromptBuilder
from ..sampling_np import top_k
from ..session_store import SessionOp, UnknownSession


@dataclass(eq=False)
class _Session:
    seq: int
    length: int
    adapter: str | None
    text: Any  # CompletionText of the appended tokens
    prompt_tokens: int
    appended: int = 0
    opened_at: float = field(default_factory=time.monotonic)


class LlamaSessionStore:
    def __init__(self, worker: Any, prompts: PromptBuilder, *, max_tokens: int) -> None:
        self._worker = worker
        self._prompts = prompts
        self._max_tokens = min(max_tokens, worker.expert.max_context)
        self._eos = tuple(sorted(worker.expert.eos_ids))[:16]
        self._sessions: dict[str, _Session] = {}  # read by InferenceWorker.adapters_in_use

    def __len__(self) -> int:
        return len(self._sessions)

    def run(self, op: SessionOp) -> SessionNext | SessionClosed:
        if op.kind == "open":
            assert isinstance(op.message, SessionOpen)
            return self._open(op.key, op.message)
        session = self._sessions.get(op.key)
        if session is None:
            raise UnknownSession(f"no session {op.request_id!r} on this expert", request_id=op.request_id)
        if op.kind == "append":
            assert isinstance(op.message, SessionAppend)
            return self._append(session, op.message)
        self._end(op.key)
        usage = Usage(prompt_tokens=session.prompt_tokens, completion_tokens=session.appended,
                      seconds=time.monotonic() - session.opened_at)
        return SessionClosed(session_id=op.request_id, usage=usage)

    def _end(self, key: str) -> None:
        session = self._sessions.pop(key)
        self._worker.context.forget(session.seq)
        self._worker.session_seqs.append(session.seq)
        self._worker.kv_used -= session.length

    def _open(self, key: str, request: SessionOpen) -> SessionNext:
        from ..detokenize import CompletionText

        if key in self._sessions:  # the trio side refuses duplicates; a stale one is replaced
            self._end(key)
        worker = self._worker
        ids = self._prompts.token_ids(request)
        if len(ids) >= self._max_tokens:
            raise PromptTooLong(f"prompt is {len(ids)} tokens; sessions on this expert hold at most "
                                f"{self._max_tokens}", request_id=request.session_id)
        if not worker.session_seqs:
            raise Busy("every session sequence of this expert is in use; retry later",
                       request_id=request.session_id)
        self._reserve(len(ids), request.session_id)
        seq = worker.session_seqs.pop(0)
        session = _Session(seq=seq, length=0, adapter=request.adapter,
                           text=CompletionText(worker.expert.tokenizer, loop_guard=False), prompt_tokens=len(ids))
        self._sessions[key] = session
        try:
            last = self._feed(session, ids)
        except BaseException:
            self._end(key)
            raise
        return self._next(request.session_id, last, request.top_k, session.length, "", eos=self._eos)

    def _append(self, session: _Session, request: SessionAppend) -> SessionNext:
        tokens = list(request.token_ids)
        vocab = self._worker.expert.n_vocab
        bad = [t for t in tokens if t >= vocab]
        if bad:
            raise RequestRejected(f"token id {bad[0]} is outside this model's vocabulary of {vocab}",
                                  request_id=request.session_id)
        if session.length + len(tokens) > self._max_tokens:
            raise PromptTooLong(f"session would hold {session.length + len(tokens)} tokens; at most "
                                f"{self._max_tokens} here", request_id=request.session_id)
        self._reserve(len(tokens), request.session_id)
        last = self._feed(session, tokens)
        session.appended += len(tokens)
        text = "".join(session.text.push(t) for t in tokens)
        return self._next(request.session_id, last, request.top_k, session.length, text)

    def _reserve(self, tokens: int, session_id: str) -> None:
        worker = self._worker
        if not worker.prefixes.make_room(tokens):
            raise Busy(f"the KV cache is full ({worker.kv_used} of {worker.kv_tokens} tokens); retry later",
                       request_id=session_id)

    def _feed(self, session: _Session, tokens: list[int]) -> Any:
        context = self._worker.context
        context.use_adapters(self._worker.lora_handles(session.adapter))
        start = session.length
        try:
            last = context.prefill(session.seq, tokens, start, keep=1)[-1]
        except BaseException:
            context.forget(session.seq, start)  # the session stays as it was before this step
            raise
        session.length += len(tokens)
        self._worker.kv_used += len(tokens)
        return last

    @staticmethod
    def _next(session_id: str, logprobs: Any, k: int, position: int, text: str,
              eos: tuple[int, ...] = ()) -> SessionNext:
        ids, values = top_k(logprobs, k)
        return SessionNext(session_id=session_id, position=position, token_ids=tuple(ids), logprobs=tuple(values),
                           text=text, eos_token_ids=eos)
