"""The llama.cpp engine's tokenizer: the GGUF's own vocabulary and chat template, no transformers.

It offers what serving calls on a tokenizer (PromptBuilder, CompletionText, scoring, the record's
``tokenizer_fingerprint``): ``tok(text, add_special_tokens=...)["input_ids"]``, ``decode(ids,
skip_special_tokens=...)``, ``apply_chat_template(...)``, ``get_vocab()``, the special tokens
and their ids.  Everything comes from llama.cpp's vocab (``llama_tokenize``,
``llama_token_to_piece``, ``llama_vocab_get_text``), which reads the same GGUF arrays
transformers reads to build its tokenizer: for SmolLM2 and Qwen2.5 the ids, texts, renders and
the vocabulary fingerprint equal transformers' (``tests/engine/test_gguf_tokenizer.py``), so
both engines announce the same ``tokenizer`` id and fuse together.

Why not transformers: building its tokenizer from a GGUF takes 6-18 s (151k merges in Python)
and importing it pulls in torch, ~300 MiB of a llama.cpp node's memory.

llama.cpp overrides a few control-looking ordinary tokens to CONTROL (Qwen2.5's ``</s>``, id
128247): its tokenizer would read that literal text as the one token where transformers reads
three ordinary ones.  A text containing such a token's text is therefore cut at the real added
tokens here and the pieces tokenized without special parsing (:meth:`GgufTokenizer.encode`).
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any

from .chat_template import render_chat


class GgufTokenizer:
    """Tokenizer over a loaded llama.cpp model's vocab (the model must outlive it: see :meth:`detach`)."""

    padding_side = "left"

    def __init__(self, model: Any) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.add_eos = bool(llama_cpp.llama_vocab_get_add_eos(self._vocab))
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template: str | None = template.decode("utf-8") if template else None
        ids = {
            "bos": int(llama_cpp.llama_vocab_bos(self._vocab)),
            "eos": int(llama_cpp.llama_vocab_eos(self._vocab)),
            "unk": _meta_int(model, "tokenizer.ggml.unknown_token_id"),
            "pad": int(llama_cpp.llama_vocab_pad(self._vocab)),
        }
        self._special_ids = {k: v for k, v in ids.items() if v is not None and 0 <= v < self.vocab_size}
        self._pad_override: str | None = None
        self._overridden, self._added = _added_tokens(llama_cpp, self._vocab, self.vocab_size)
        self._owned_model: Any = None
        self._pieces: dict[tuple[int, bool], bytes] = {}

    @classmethod
    def from_file(cls, gguf: str | Path) -> GgufTokenizer:
        """The tokenizer of a GGUF file alone (its vocabulary, no weights); free it with :meth:`close`."""
        from .backend import import_llama_cpp, init_backend

        llama_cpp = import_llama_cpp()
        init_backend()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
        if not model:
            raise ValueError(f"llama.cpp cannot read the vocabulary of {gguf}")
        tokenizer = cls(model)
        tokenizer._owned_model = model
        return tokenizer

    def close(self) -> None:
        """Free the vocabulary-only model that :meth:`from_file` loaded."""
        model, self._owned_model = self._owned_model, None
        self.detach()
        if model is not None:
            self._llama.llama_model_free(model)

    def detach(self) -> None:
        """The model is being freed: further calls fail clearly instead of reading freed memory."""
        self._vocab = None

    # -- special tokens (the names transformers' tokenizers use) --

    def token_text(self, token_id: int) -> str:
        return self._live_vocab_text(token_id)

    def _special(self, kind: str) -> str | None:
        token = self._special_ids.get(kind)
        return None if token is None else self.token_text(token)

    @property
    def bos_token(self) -> str | None:
        return self._special("bos")

    @property
    def bos_token_id(self) -> int | None:
        return self._special_ids.get("bos")

    @property
    def eos_token(self) -> str | None:
        return self._special("eos")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_ids.get("eos")

    @property
    def unk_token(self) -> str | None:
        return self._special("unk")

    @property
    def pad_token(self) -> str | None:
        return self._pad_override if self._pad_override is not None else self._special("pad")

    @pad_token.setter
    def pad_token(self, text: str) -> None:
        ids = self(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"pad token {text!r} is not one token of this vocabulary")
        self._pad_override = text
        self._special_ids["pad"] = ids[0]

    @property
    def pad_token_id(self) -> int | None:
        return self._special_ids.get("pad")

    @property
    def special_tokens_map(self) -> dict[str, str]:
        names = {"bos": "bos_token", "eos": "eos_token", "unk": "unk_token", "pad": "pad_token"}
        found = {names[kind]: getattr(self, names[kind]) for kind in self._special_ids}
        return {k: v for k, v in found.items() if v is not None}

    # -- text <-> ids --

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in it (``<|im_start|>``) become their ids."""
        if any(t in text for t in self._overridden):
            return self._encode_split(text, add_special_tokens)
        return self._tokenize(text, add_special_tokens, parse_special=True)

    def _encode_split(self, text: str, add_special_tokens: bool) -> list[int]:
        """``text`` cut at the added tokens' texts, which become their ids; the rest is plain text."""
        pattern = "|".join(re.escape(t) for t in sorted(self._added, key=len, reverse=True))
        ids = [self._special_ids["bos"]] if add_special_tokens and self.add_bos and "bos" in self._special_ids else []
        at = 0
        for match in re.finditer(pattern, text):
            ids += self._tokenize(text[at : match.start()], False, parse_special=False)
            ids.append(self._added[match.group()])
            at = match.end()
        ids += self._tokenize(text[at:], False, parse_special=False)
        if add_special_tokens and self.add_eos and "eos" in self._special_ids:
            ids.append(self._special_ids["eos"])
        return ids

    def _tokenize(self, text: str, add_special: bool, *, parse_special: bool) -> list[int]:
        if not text and not add_special:
            return []
        vocab = self._live_vocab()
        data = text.encode("utf-8")
        room = len(data) + 2 * (self.add_bos + self.add_eos) + 1
        buffer = (self._llama.llama_token * room)()
        n = self._llama.llama_tokenize(vocab, data, len(data), buffer, room, add_special, parse_special)
        if n < 0:  # cannot happen (a token covers at least one byte), but never read past the buffer
            room = -n
            buffer = (self._llama.llama_token * room)()
            n = self._llama.llama_tokenize(vocab, data, len(data), buffer, room, add_special, parse_special)
        return list(buffer[:n])

    def decode(self, token_ids: Any, skip_special_tokens: bool = False) -> str:
        """The text of ``token_ids``; invalid UTF-8 (a character cut between tokens) reads as U+FFFD.

        ``skip_special_tokens`` drops control tokens (``<|im_end|>``), as transformers drops the
        tokens its GGUF reader marked special; user-defined added tokens stay (``<tool_call>``).
        """
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        render = not skip_special_tokens
        pieces = self._pieces
        parts = []
        for token in token_ids:
            key = (int(token), render)
            piece = pieces.get(key)
            if piece is None:
                piece = pieces[key] = self._piece(*key)
            parts.append(piece)
        return b"".join(parts).decode("utf-8", "replace")

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        return [self.token_text(t) for t in token_ids]

    def get_vocab(self) -> dict[str, int]:
        """Token text -> id, as the GGUF stores them (byte-level BPE texts, e.g. ``Ġthe``)."""
        return {self.token_text(i): i for i in range(self.vocab_size)}

    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = False) -> Any:
        if not self.chat_template:
            raise ValueError("this model has no chat template")
        text = render_chat(self.chat_template, messages, special_tokens=self.special_tokens_map,
                           add_generation_prompt=add_generation_prompt,
                           continue_final_message=continue_final_message)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- llama.cpp calls --

    def _live_vocab(self) -> Any:
        if self._vocab is None:
            raise RuntimeError("the tokenizer's model was closed")
        return self._vocab

    def _live_vocab_text(self, token_id: int) -> str:
        return bytes(self._llama.llama_vocab_get_text(self._live_vocab(), token_id)).decode("utf-8", "replace")

    def _piece(self, token_id: int, special: bool) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside this vocabulary of {self.vocab_size}")
        vocab = self._live_vocab()
        buffer = ctypes.create_string_buffer(64)
        n = self._llama.llama_token_to_piece(vocab, token_id, buffer, 64, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._llama.llama_token_to_piece(vocab, token_id, buffer, -n, 0, special)
        return buffer.raw[:n]


def _added_tokens(llama_cpp: Any, vocab: Any, n_vocab: int) -> tuple[tuple[str, ...], dict[str, int]]:
    """(texts of ordinary tokens llama.cpp made CONTROL, {text: id} of the GGUF's real added tokens).

    An overridden token keeps its NORMAL attribute beside CONTROL; real added tokens (CONTROL or
    USER_DEFINED in the file) have no NORMAL bit.
    """
    normal = llama_cpp.LLAMA_TOKEN_ATTR_NORMAL
    added_bits = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    overridden: list[str] = []
    added: dict[str, int] = {}
    for token in range(n_vocab):
        attr = int(llama_cpp.llama_vocab_get_attr(vocab, token))
        if attr & added_bits:
            text = bytes(llama_cpp.llama_vocab_get_text(vocab, token)).decode("utf-8", "replace")
            if attr & normal:
                overridden.append(text)
            else:
                added[text] = token
    return tuple(overridden), added


def _meta_int(model: Any, key: str) -> int | None:
    import llama_cpp

    buffer = ctypes.create_string_buffer(32)
    if llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, 32) < 0:
        return None
    try:
        return int(buffer.value)
    except ValueError:
        return None
