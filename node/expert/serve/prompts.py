"""Requests -> prompt token ids: raw prompts as-is, chat messages through the model's chat template.

A base model without a chat template (the catalog's Gemma 3 270M) still takes chat messages:
the coordinator's strategies send every expert messages, and refusing them made any fan-out
that included such an expert fail the whole query.  They are rendered as a plain completion
prompt instead (:func:`plain_prompt`): the turns' texts one after another, each assistant turn
as ``Answer: ...``, ending with an ``Answer:`` cue.  A single question renders exactly as
``node eval`` asks a template-less model through ``/v1/completions`` (``"<question>\nAnswer:"``).
"""

from __future__ import annotations

from typing import Any

from protocol import GenerateRequest, NextTokenRequest, ScoreRequest, SessionOpen

from ..errors import RequestRejected

AnyPromptRequest = GenerateRequest | ScoreRequest | NextTokenRequest | SessionOpen


class PromptBuilder:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def templated(self) -> bool:
        return bool(getattr(self._tokenizer, "chat_template", None))

    def text(self, request: AnyPromptRequest) -> str:
        """The prompt as text: chat messages are rendered with the template and a generation prompt.

        A trailing ``assistant`` message is a prefix to continue, not a finished
        turn: the coordinator sends one when an expert failed mid-answer and
        another continues its partial text (coordinator/pool.py, failover).
        """
        if request.messages is None:
            assert request.prompt is not None  # the message type guarantees exactly one
            return request.prompt
        if not self.templated:
            return plain_prompt([(m.role, m.content) for m in request.messages])
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if messages[-1]["role"] == "assistant":
            return self._tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def token_ids(self, request: AnyPromptRequest) -> list[int]:
        """Token ids of the prompt; chat templates already contain their special tokens."""
        text = self.text(request)
        # A rendered chat template holds its own special tokens; raw and plain prompts need the BOS.
        ids = self._tokenizer(text, add_special_tokens=request.messages is None or not self.templated)["input_ids"]
        if not ids:
            request_id = request.session_id if isinstance(request, SessionOpen) else request.request_id
            raise RequestRejected("the prompt is empty", request_id=request_id)
        return list(ids)

    def continuation_ids(self, continuation: str) -> list[int]:
        return list(self._tokenizer(continuation, add_special_tokens=False)["input_ids"])


ANSWER_CUE = "Answer:"


def plain_prompt(messages: list[tuple[str, str]]) -> str:
    """Chat turns as one completion prompt for a model without a chat template.

    System and user texts follow each other separated by blank lines; an assistant turn is
    ``Answer: <text>`` on the next line.  A final assistant turn is a prefix to continue
    (failover), so it gets no cue after it; otherwise the prompt ends with ``Answer:``.
    """
    text = ""
    for role, content in messages:
        if role == "assistant":
            text += f"\n{ANSWER_CUE} {content}"
        else:
            text += ("\n\n" if text else "") + content
    if not messages or messages[-1][0] != "assistant":
        text += f"\n{ANSWER_CUE}"
    return text
