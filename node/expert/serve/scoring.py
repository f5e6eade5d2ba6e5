"""Single-forward calls the coordinator uses for judging and token-level fusion.

``score``: per-token log-probabilities of a given continuation after the
prompt (one forward over prompt + continuation).  ``next_token``: the top-k
log-probabilities of the token after the prompt.  Both run on the worker
thread between decode steps; they never enter the running batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol import NextTokenRequest, NextTokenResult, ScoreRequest, ScoreResult

from ..errors import PromptTooLong
from ..model.loader import LoadedExpert
from .prompts import PromptBuilder


class Scorer:
    def __init__(
        self,
        expert: LoadedExpert,
        prompts: PromptBuilder,
        forward: Callable[..., Any],
    ) -> None:
        self._expert = expert
        self._prompts = prompts
        self._model_forward = forward  # the worker's adapter-aware forward

    def score(self, request: ScoreRequest) -> ScoreResult:
        import torch

        prompt = self._prompts.token_ids(request)
        continuation = self._prompts.continuation_ids(request.continuation)
        self._check_length(request.request_id, len(prompt) + len(continuation))
        ids = torch.tensor([prompt + continuation], dtype=torch.long, device=self._expert.device)
        # Only the positions that predict continuation tokens need vocabulary logits.
        logits = self._forward(ids, request.adapter, logits_to_keep=len(continuation) + 1)[0, :-1, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(continuation, dtype=torch.long, device=logprobs.device)
        picked = logprobs.gather(1, target[:, None])[:, 0]
        return ScoreResult(
            request_id=request.request_id, token_ids=tuple(continuation), logprobs=tuple(picked.tolist())
        )

    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        import torch

        prompt = self._prompts.token_ids(request)
        self._check_length(request.request_id, len(prompt))
        ids = torch.tensor([prompt], dtype=torch.long, device=self._expert.device)
        logits = self._forward(ids, request.adapter, logits_to_keep=1)[0, -1, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = torch.topk(logprobs, k=min(request.top_k, logprobs.shape[-1]))
        token_ids = top.indices.tolist()
        tokens = tuple(self._expert.tokenizer.decode([t])[:256] for t in token_ids)
        return NextTokenResult(
            request_id=request.request_id,
            token_ids=tuple(token_ids),
            logprobs=tuple(top.values.tolist()),
            tokens=tokens,
        )

    def _forward(self, ids: Any, adapter: str | None, *, logits_to_keep: int) -> Any:
        out = self._model_forward([adapter], input_ids=ids, use_cache=False, logits_to_keep=logits_to_keep)
        return out.logits

    def _check_length(self, request_id: str, length: int) -> None:
        if length > self._expert.max_context:
            raise PromptTooLong(
                f"{length} tokens exceed this expert's context of {self._expert.max_context}",
                request_id=request_id,
            )
