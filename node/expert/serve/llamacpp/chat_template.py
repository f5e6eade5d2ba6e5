"""A model's Jinja chat template rendered as transformers' ``apply_chat_template`` renders it.

The llama.cpp engine reads the template from the GGUF (``tokenizer.chat_template``, the same
string transformers reads from that file) and renders it here with jinja2 alone, so serving
needs no transformers (and no torch, which transformers imports).  The environment follows
transformers' (``utils/chat_template_utils.py``): a sandbox, because templates in downloaded
files are untrusted code; ``trim_blocks``/``lstrip_blocks``; the loop controls; a ``tojson``
that does not escape HTML; ``raise_exception`` and ``strftime_now``; the special-token strings
(``bos_token``, ``eos_token`` ...) as variables.  ``tests/engine/test_gguf_tokenizer.py``
checks the renders against transformers'.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

# transformers appends this to the final message to find where that message ends in the render.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(ValueError):
    """The template refused the conversation (its ``raise_exception``) or the request is malformed."""


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    special_tokens: dict[str, str],
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
) -> str:
    """``messages`` rendered with ``template``; ``continue_final_message`` leaves the last turn open.

    An open last turn is cut right after its content (transformers' rule: the content is tagged,
    rendered, and the render cut at the tag, minus trailing space if the template trimmed it).
    """
    import jinja2

    if not messages:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation")
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError("continue_final_message and add_generation_prompt exclude each other")
    chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
    if continue_final_message:
        if not isinstance(chat[-1].get("content"), str):
            raise ChatTemplateError("continue_final_message needs a final message with text content")
        chat[-1] = {**chat[-1], "content": chat[-1]["content"] + _CONTINUE_TAG}
    try:
        rendered = _compiled(template).render(messages=chat, tools=None, documents=None,
                                             add_generation_prompt=add_generation_prompt, **special_tokens)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"the chat template refused the conversation: {exc}") from None
    if continue_final_message:
        tag = _CONTINUE_TAG.strip()
        if tag not in rendered:
            raise ChatTemplateError("the chat template drops the final message, so it cannot be continued")
        at = rendered.rindex(tag)
        if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            rendered = rendered[:at]
        else:  # the template trimmed the message's trailing space
            rendered = rendered[:at].rstrip()
    return rendered
