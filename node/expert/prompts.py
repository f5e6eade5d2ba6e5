"""Requests -> prompt token ids: raw prompts as-is, chat messages through the model's chat template."""

from __future__ import annotations

from typing import Any

from protocol import GenerateRequest, NextTokenRequest, ScoreRequest, SessionOpen

from .errors import RequestRejected

AnyPromptRequest = GenerateRequest | ScoreRequest | NextTokenRequest | SessionOpen


class PromptBuilder:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def text(self, request: AnyPromptRequest) -> str:
        """The prompt as text: chat messages are rendered with the template and a generation prompt.

        A trailing ``assistant`` message is a prefix to continue, not a finished
        turn: the coordinator sends one when an expert failed mid-answer and
        another continues its partial text (coordinator/pool.py, failover).
        """
        if request.messages is None:
            assert request.prompt is not None  # the message type guarantees exactly one
            return request.prompt
        if not getattr(self._tokenizer, "chat_template", None):
            raise RequestRejected("this model has no chat template; send `prompt` instead of `messages`")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if messages[-1]["role"] == "assistant":
            return self._tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def token_ids(self, request: AnyPromptRequest) -> list[int]:
        """Token ids of the prompt; chat templates already contain their special tokens."""
        text = self.text(request)
        ids = self._tokenizer(text, add_special_tokens=request.messages is None)["input_ids"]
        if not ids:
            request_id = request.session_id if isinstance(request, SessionOpen) else request.request_id
            raise RequestRejected("the prompt is empty", request_id=request_id)
        return list(ids)

    def continuation_ids(self, continuation: str) -> list[int]:
        return list(self._tokenizer(continuation, add_special_tokens=False)["input_ids"])
