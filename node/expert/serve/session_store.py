"""Generation sessions, worker side: a prompt's KV cache kept between requests.

Token-level fusion asks several experts for their next-token distribution,
picks a token, and feeds it back to every expert.  Without a session each
step would resend and re-prefill the whole prompt (O(n^2) compute and bytes);
with one, a step is one token in and one decode forward.

Each session is its own batch-of-one ``DynamicCache`` (a "separate small KV
store"), not a row of the running generation batch: a session step arrives
only when the coordinator has chosen a token, at its own pace, so it runs
between decode steps like score / next-token jobs do (batcher.py), without
padding the batch for rows that idle most of the time.

Everything here runs on the inference worker thread.  Who may open how many
sessions, idle expiry and receipts are the trio side's business (sessions.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from protocol import (
    SessionAppend,
    SessionClose,
    SessionClosed,
    SessionNext,
    SessionOpen,
    Usage,
)

from ..errors import PromptTooLong, RequestRejected
from ..model.loader import LoadedExpert
from .prompts import PromptBuilder

OpKind = Literal["open", "append", "close", "drop"]


class UnknownSession(RequestRejected):
    """No such session (never opened, closed, or expired after idling)."""

    code = "not_found"


@dataclass(frozen=True)
class SessionOp:
    """One session operation handed to the worker as a :class:`~node.expert.serve.jobs.Job`'s request.

    ``key`` is the session's worker-side name (owner peer + session id, chosen
    by the trio side) so two peers' sessions never collide.
    """

    kind: OpKind
    key: str
    message: SessionOpen | SessionAppend | SessionClose | None = None
    adapter: str | None = None  # checked by InferenceWorker.submit like any request's

    @property
    def request_id(self) -> str:
        return self.key.rpartition("/")[2]


@dataclass(eq=False)
class _Session:
    cache: Any  # transformers DynamicCache of this session's context
    length: int  # tokens in the cache
    adapter: str | None
    text: Any  # CompletionText of the appended tokens
    prompt_tokens: int
    appended: int = 0
    opened_at: float = field(default_factory=time.monotonic)


class SessionStore:
    """The live sessions of one worker, by key (worker thread only)."""

    def __init__(
        self,
        expert: LoadedExpert,
        prompts: PromptBuilder,
        forward: Callable[..., Any],
        eos_ids: frozenset[int],
        *,
        max_tokens: int,
    ) -> None:
        self._expert = expert
        self._prompts = prompts
        self._forward = forward  # the worker's adapter-aware forward
        self._eos = tuple(sorted(eos_ids))[:16]
        self._max_tokens = min(max_tokens, expert.max_context)
        self._vocab = int(expert.model.get_input_embeddings().weight.shape[0])
        self._sessions: dict[str, _Session] = {}

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
            return self._append(op.key, session, op.message)
        del self._sessions[op.key]
        usage = Usage(prompt_tokens=session.prompt_tokens, completion_tokens=session.appended,
                      seconds=time.monotonic() - session.opened_at)
        return SessionClosed(session_id=op.request_id, usage=usage)

    def _open(self, key: str, request: SessionOpen) -> SessionNext:
        import torch

        from .detokenize import CompletionText

        if key in self._sessions:  # the trio side refuses duplicates; a stale one is replaced
            del self._sessions[key]
        ids = self._prompts.token_ids(request)
        if len(ids) >= self._max_tokens:
            raise PromptTooLong(f"prompt is {len(ids)} tokens; sessions on this expert hold at most "
                                f"{self._max_tokens}", request_id=request.session_id)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._expert.device)
        out = self._forward([request.adapter], input_ids=input_ids, use_cache=True, logits_to_keep=1)
        self._sessions[key] = _Session(
            cache=out.past_key_values, length=len(ids), adapter=request.adapter,
            text=CompletionText(self._expert.tokenizer, loop_guard=False), prompt_tokens=len(ids),
        )
        return self._next(request.session_id, out.logits, request.top_k, len(ids), "", eos=self._eos)

    def _append(self, key: str, session: _Session, request: SessionAppend) -> SessionNext:
        import torch

        tokens = request.token_ids
        bad = [t for t in tokens if t >= self._vocab]
        if bad:
            raise RequestRejected(f"token id {bad[0]} is outside this model's vocabulary of {self._vocab}",
                                  request_id=request.session_id)
        if session.length + len(tokens) > self._max_tokens:
            raise PromptTooLong(f"session would hold {session.length + len(tokens)} tokens; at most "
                                f"{self._max_tokens} here", request_id=request.session_id)
        input_ids = torch.tensor([list(tokens)], dtype=torch.long, device=self._expert.device)
        # A batch-of-one cache without padding: the model derives positions from the cache length.
        out = self._forward([session.adapter], input_ids=input_ids, past_key_values=session.cache,
                            use_cache=True, logits_to_keep=1)
        session.cache = out.past_key_values
        session.length += len(tokens)
        session.appended += len(tokens)
        text = "".join(session.text.push(t) for t in tokens)
        return self._next(request.session_id, out.logits, request.top_k, session.length, text)

    def _next(self, session_id: str, logits: Any, top_k: int, position: int, text: str,
              eos: tuple[int, ...] = ()) -> SessionNext:
        import torch

        logprobs = torch.log_softmax(logits[0, -1, :].float(), dim=-1)
        top = torch.topk(logprobs, k=min(top_k, logprobs.shape[-1]))
        return SessionNext(session_id=session_id, position=position, token_ids=tuple(top.indices.tolist()),
                           logprobs=tuple(top.values.tolist()), text=text, eos_token_ids=eos)
