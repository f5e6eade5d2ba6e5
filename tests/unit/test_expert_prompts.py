"""Requests -> prompt text/ids in the expert, including a base model without a chat template."""

from __future__ import annotations

import copy

import pytest

import protocol as p
from node.eval.client import raw_prompt
from node.expert.serve.prompts import PromptBuilder, plain_prompt


def test_plain_prompt_reads_like_a_question_and_its_answers():
    assert plain_prompt([("user", "What is 2+2?")]) == "What is 2+2?\nAnswer:"
    # the same text node eval sends a template-less model through /v1/completions
    assert plain_prompt([("user", "Q?")]) == raw_prompt("Q?")
    assert plain_prompt([("system", "Be brief."), ("user", "Q?")]) == "Be brief.\n\nQ?\nAnswer:"
    assert plain_prompt([("user", "Q?"), ("assistant", "4"), ("user", "Sure?")]) == "Q?\nAnswer: 4\n\nSure?\nAnswer:"
    # a trailing assistant turn is a prefix to continue (failover): no cue after it
    assert plain_prompt([("user", "Q?"), ("assistant", "The ans")]) == "Q?\nAnswer: The ans"


def _chat(*turns: tuple[str, str]) -> p.GenerateRequest:
    return p.GenerateRequest(request_id="r", messages=tuple(p.ChatMessage(role=r, content=c) for r, c in turns))


# The session's SmolLM2 expert (shared with other tests) takes most of a minute to load on a loaded box.
@pytest.mark.timeout(300)
def test_template_less_model_gets_messages_as_a_plain_prompt_with_its_bos(torch_expert):
    tok = copy.deepcopy(torch_expert.tokenizer)  # the session's expert keeps its template
    templated = PromptBuilder(tok)
    request = _chat(("system", "Be brief."), ("user", "What is 2+2?"))
    assert "<|im_start|>" in templated.text(request)  # SmolLM2's own template
    tok.chat_template = None  # now it is a base model, as Gemma 3 270M is packaged
    base = PromptBuilder(tok)
    assert base.text(request) == "Be brief.\n\nWhat is 2+2?\nAnswer:"
    assert base.token_ids(request) == tok("Be brief.\n\nWhat is 2+2?\nAnswer:", add_special_tokens=True)["input_ids"]
    raw = p.GenerateRequest(request_id="r", prompt="2+2=")
    assert base.text(raw) == "2+2=" and templated.text(raw) == "2+2="
