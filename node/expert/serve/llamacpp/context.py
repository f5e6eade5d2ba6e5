"""One llama.cpp context: sequences in a shared KV cache, batched decodes, logits, LoRA per decode.

Thin, typed wrapper over llama-cpp-python's low-level API (1:1 with llama.h), used only on the
inference worker's thread.  Every sequence (a running generation, a session, the scratch sequence
of score / next-token calls) has its own ``seq_id`` in one unified KV cache; one
:meth:`LlamaContext.decode` runs tokens of several sequences together, which is what makes
continuous batching possible (the high-level ``llama_cpp.Llama`` runs one sequence at a time).

LoRA adapters apply to the whole context in llama.cpp, not per sequence, so a decode carries
the tokens of one adapter set only: the worker groups a step's rows by adapter and decodes each
group in turn (llama.cpp's own server does the same).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sampling_np import log_softmax

# Tokens of one llama_decode call (n_batch): also the largest prefill chunk of one step.
BATCH_TOKENS = 512
# Rows with logits in one decode of a prefill (see LlamaContext.prefill).
OUTPUTS_PER_DECODE = 32


@dataclass(frozen=True)
class Row:
    """One token of a decode: which sequence, at which position, and whether its logits are wanted."""

    seq: int
    token: int
    pos: int
    logits: bool = False


class DecodeFailed(RuntimeError):
    """llama_decode refused a batch (no KV room, or an internal error)."""


class LlamaContext:
    def __init__(self, expert: Any, *, kv_tokens: int, sequences: int, threads: int) -> None:
        import llama_cpp

        self._ll = llama_cpp
        self.expert = expert
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_tokens
        params.n_batch = BATCH_TOKENS
        params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = sequences
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = True  # every sequence may use any cell: one budget for all
        # Flash attention never materialises the [heads x tokens x cells] score matrix (150 MB for a
        # 512-token chunk over 8192 cells); "auto" picks it on a CPU too, but say so: references
        # (tests/expert/fixtures.py) must run the same attention to agree to the last digits.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(expert.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {kv_tokens} tokens")
        self.kv_tokens = int(llama_cpp.llama_n_ctx(self.ctx))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = int(expert.n_vocab)
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._adapters: tuple[Any, ...] = ()
        self.decodes = 0

    def close(self) -> None:
        if self.ctx:
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self.ctx)
            self.ctx = None

    def use_adapters(self, adapters: tuple[Any, ...]) -> None:
        """Apply these GGUF LoRA handles (scale 1: peft's alpha / r is in the file) to later decodes."""
        if adapters == self._adapters:
            return
        n = len(adapters)
        handles = (self._ll.llama_adapter_lora_p_ctypes * max(n, 1))(*adapters)
        scales = (ctypes.c_float * max(n, 1))(*([1.0] * n))
        if self._ll.llama_set_adapters_lora(self.ctx, handles if n else None, n, scales if n else None) != 0:
            raise RuntimeError("llama.cpp refused the LoRA adapter set")
        self._adapters = adapters

    def decode(self, rows: list[Row]) -> list[int]:
        """Decode ``rows`` (at most BATCH_TOKENS) in one call; the batch index of each row that wants logits."""
        batch = self._batch
        wanted: list[int] = []
        for i, row in enumerate(rows):
            batch.token[i] = row.token
            batch.pos[i] = row.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = row.seq
            batch.logits[i] = 1 if row.logits else 0
            if row.logits:
                wanted.append(i)
        batch.n_tokens = len(rows)
        status = self._ll.llama_decode(self.ctx, batch)
        if status != 0:
            raise DecodeFailed(f"llama_decode returned {status} for {len(rows)} tokens")
        self.decodes += 1
        return wanted

    def logits(self, index: int) -> np.ndarray:
        """The vocabulary logits of batch row ``index`` of the last decode (a view: read before the next)."""
        pointer = self._ll.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def prefill(self, seq: int, tokens: list[int], start: int, *, keep: int = 1) -> list[np.ndarray]:
        """Run ``tokens`` into ``seq`` from position ``start`` in chunks; log-probs after the last ``keep``.

        Each kept row comes back as a float32 copy (the logits buffer is overwritten by the next
        decode).  A chunk holds at most :data:`OUTPUTS_PER_DECODE` rows with logits: llama.cpp
        grows its output buffer to the most rows one decode asked for, and a row is a whole
        vocabulary (600 KB for Qwen's 152k tokens), so a 512-token score would pin 300 MB.
        """
        out: list[np.ndarray] = []
        first_kept = len(tokens) - keep
        offset = 0
        while offset < len(tokens):
            end = min(len(tokens), offset + BATCH_TOKENS)
            if end > first_kept:  # this chunk reaches the rows whose logits are wanted
                end = min(end, max(first_kept, offset) + OUTPUTS_PER_DECODE)
            rows = [Row(seq, tokens[j], start + j, j >= first_kept) for j in range(offset, end)]
            for index in self.decode(rows):
                out.append(log_softmax(self.logits(index)))
            offset = end
        return out

    def copy(self, source: int, target: int, length: int) -> None:
        """Give ``target`` the cells of ``source``'s positions ``[0, length)``.

        In the unified KV cache a cell may belong to several sequences: this shares the cells
        (no data is copied), and each sequence appends its own tokens after them.
        """
        self._ll.llama_memory_seq_cp(self.memory, source, target, 0, length)

    def forget(self, seq: int, start: int = 0) -> None:
        """Drop ``seq``'s KV cells from position ``start`` on (all of them by default)."""
        self._ll.llama_memory_seq_rm(self.memory, seq, start, -1)
