"""The llama.cpp engine's own tokenizer against transformers' tokenizer of the same GGUF.

The llama.cpp engine tokenizes, renders chat templates and detokenizes without transformers
(:class:`GgufTokenizer`).  The torch engine uses transformers' tokenizer built from the same
file.  Both must give the same ids, the same renders and the same vocabulary fingerprint, or a
prompt would mean different things on the two engines and cross-engine fusion would not match.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.expert.model.loader import default_gguf_path, tokenizer_fingerprint
from node.expert.serve.llamacpp.chat_template import ChatTemplateError

TEXTS = [
    "Hello, world!",
    "What is 12 + 30?",
    "  leading spaces and trailing  ",
    "Hello , world . Don 't",  # transformers' optional clean-up of spaces would change this
    "naïve café — 東京 🙂 ünïcödé Ελληνικά",
    "line1\n\nline2\ttab\r\n",
    "<|im_start|>user\nhi<|im_end|>",  # special tokens written in the text
    "def f(x):\n    return x * 2\n",
    "</s> <tool_call> <|endoftext|>",  # Qwen: </s> is an ordinary token that llama.cpp marks CONTROL
    "",
    "a" * 300,
]
CHATS = [
    ([{"role": "user", "content": "What is the capital of Italy?"}], {"add_generation_prompt": True}),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
     {"add_generation_prompt": True}),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "And 東京?"}], {"add_generation_prompt": True}),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}], {}),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}],
     {"continue_final_message": True}),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ends in a space "}],
     {"continue_final_message": True}),
]


def _qwen_gguf() -> Path:
    from node.expert.model import catalog

    model = catalog.lookup("qwen2.5-0.5b")
    if model is None or catalog.state(model, Path(os.environ["MOSAIC_CACHE_DIR"])).startswith(("not", "partial")):
        pytest.skip("the Qwen2.5-Coder-0.5B packages are not installed")
    return catalog.ensure_gguf(model, Path(os.environ["MOSAIC_CACHE_DIR"]))[0]


@pytest.fixture(scope="module", params=["smollm2", pytest.param("qwen2.5-0.5b", marks=pytest.mark.slow)])
def tokenizers(request: pytest.FixtureRequest):
    """(ours, transformers') for one GGUF."""
    from transformers import AutoTokenizer

    from node.expert.serve.llamacpp.tokenizer import GgufTokenizer

    gguf = default_gguf_path() if request.param == "smollm2" else _qwen_gguf()
    ours = GgufTokenizer.from_file(gguf)
    theirs = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    yield ours, theirs
    ours.close()


@pytest.mark.parametrize("add_special", [True, False])
def test_token_ids_equal_transformers(tokenizers, add_special: bool) -> None:
    ours, theirs = tokenizers
    for text in TEXTS:
        assert ours(text, add_special_tokens=add_special)["input_ids"] == \
            theirs(text, add_special_tokens=add_special)["input_ids"], text


def test_decode_equals_transformers_and_round_trips(tokenizers) -> None:
    ours, theirs = tokenizers
    for text in TEXTS:
        ids = theirs(text, add_special_tokens=False)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text
        if "<|" not in text and "<tool_call>" not in text:
            assert ours.decode(ours(text, add_special_tokens=False)["input_ids"]) == text
    # A character split across tokens reads as U+FFFD until its last byte arrives, in both.
    ids = theirs("🙂東京", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2
    for end in range(len(ids) + 1):
        assert ours.decode(ids[:end], skip_special_tokens=True) == theirs.decode(ids[:end], skip_special_tokens=True)


def test_chat_renders_equal_transformers(tokenizers) -> None:
    ours, theirs = tokenizers
    assert ours.chat_template == theirs.chat_template
    for messages, options in CHATS:
        mine = ours.apply_chat_template(messages, tokenize=False, **options)
        assert mine == theirs.apply_chat_template(messages, tokenize=False, **options)
        assert ours(mine, add_special_tokens=False)["input_ids"] == theirs(mine, add_special_tokens=False)["input_ids"]


def test_special_tokens_and_fingerprint_equal_transformers(tokenizers) -> None:
    ours, theirs = tokenizers
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == \
        (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
    assert ours.get_vocab() == theirs.get_vocab()
    assert tokenizer_fingerprint(ours) == tokenizer_fingerprint(theirs)


def test_bad_chat_requests_are_refused_clearly(tokenizers) -> None:
    ours, _ = tokenizers
    with pytest.raises(ChatTemplateError, match="empty"):
        ours.apply_chat_template([], add_generation_prompt=True)
    with pytest.raises(ChatTemplateError, match="exclude"):
        ours.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                 continue_final_message=True)
    with pytest.raises(ValueError, match="outside this vocabulary"):
        ours.decode([ours.vocab_size + 5])


def test_engines_announce_the_same_tokenizer(base_expert, llama_expert) -> None:
    """The signed record's ``tokenizer`` id: the torch engine's (transformers) equals llama.cpp's."""
    assert llama_expert.tokenizer_id == base_expert.tokenizer_id
    assert llama_expert.tokenizer_id.startswith("vocab-sha256:")
