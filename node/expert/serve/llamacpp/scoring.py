"""Score and next-token calls on the llama.cpp engine: full-vocabulary logits on a scratch sequence.

They run between two decode steps (as on the torch engine), on a sequence of their own that is
emptied after each call; the prompt goes in chunks of one llama_decode each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol import NextTokenRequest, NextTokenResult, ScoreRequest, ScoreResult

from ...errors import Busy, PromptTooLong
from ..prompts import PromptBuilder
from ..sampling_np import top_k

if TYPE_CHECKING:
    import numpy as np


class LlamaScorer:
    def __init__(self, worker: Any, prompts: PromptBuilder) -> None:
        self._worker = worker
        self._prompts = prompts

    def score(self, request: ScoreRequest) -> ScoreResult:
        prompt = self._prompts.token_ids(request)
        continuation = self._prompts.continuation_ids(request.continuation)
        rows = self._logprobs(request.request_id, request.adapter, prompt + continuation, len(continuation) + 1)
        picked = tuple(float(rows[i][t]) for i, t in enumerate(continuation))
        return ScoreResult(request_id=request.request_id, token_ids=tuple(continuation), logprobs=picked)

    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        prompt = self._prompts.token_ids(request)
        last = self._logprobs(request.request_id, request.adapter, prompt, 1)[-1]
        ids, values = top_k(last, request.top_k)
        tokenizer = self._worker.expert.tokenizer
        return NextTokenResult(request_id=request.request_id, token_ids=tuple(ids), logprobs=tuple(values),
                               tokens=tuple(tokenizer.decode([t])[:256] for t in ids))

    def _logprobs(self, request_id: str, adapter: str | None, ids: list[int], keep: int) -> list[np.ndarray]:
        """Log-probabilities after each of the last ``keep`` tokens of ``ids``."""
        worker = self._worker
        if len(ids) > worker.expert.max_context:
            raise PromptTooLong(f"{len(ids)} tokens exceed this expert's context of {worker.expert.max_context}",
                                request_id=request_id)
        if not worker.prefixes.make_room(len(ids)):
            raise Busy(f"the KV cache is full ({worker.kv_used} of {worker.kv_tokens} tokens); retry later",
                       request_id=request_id)
        context = worker.context
        seq = worker.scratch_seq
        context.use_adapters(worker.lora_handles(adapter))
        try:
            return context.prefill(seq, ids, 0, keep=keep)
        finally:
            context.forget(seq)
