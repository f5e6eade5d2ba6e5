"""Prompt prefixes kept in the KV cache, so a new generation copies them instead of prefilling them.

Every chat request starts with the same rendered header (the template's system prompt and the
user turn's opening: 24 tokens for SmolLM2 and Qwen2.5, about half of a short question), and a
conversation resends its whole history.  Prefill is compute-bound on a CPU: the cost of a prompt
is the tokens actually run, so a token not run is the only saving.

When a generation's prompt is prefilled, its cells are also given to a sequence of this cache
(``llama_memory_seq_cp``: in the unified KV cache the cells are shared, not copied).  A new
generation whose prompt starts with the same tokens under the same adapter set (a LoRA changes
every layer's keys and values) gets the longest common prefix the same way and prefills only
the rest.  At least the prompt's last token is always run: its logits choose the first token.

Entries are evicted least recently used, when their sequences are all taken or when admission,
a session or a score call needs their KV room (``make_room``).  Accounting is conservative: an
entry counts its whole length against the worker's ``kv_used`` although cells it shares with a
running generation are counted there too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

# Shorter common prefixes are not worth a sequence copy (and would churn the entries).
MIN_SHARED_TOKENS = 4


@dataclass(eq=False)
class _Entry:
    seq: int
    adapter: str | None
    tokens: tuple[int, ...]
    used: int  # tick of the last store or hit (least recently used goes first)


def common_prefix(a: tuple[int, ...] | list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Prompt KV on sequences of their own (see the module docstring); worker thread only."""

    def __init__(self, worker: Any, seqs: list[int]) -> None:
        self._worker = worker  # context, kv_used
        self._free = list(seqs)
        self.capacity = len(seqs)  # 0: no prefix is ever kept
        self._entries: list[_Entry] = []
        self._tick = itertools.count()
        self.hits = 0  # generations that copied a prefix (tests, metrics)
        self.shared_tokens = 0  # prompt tokens they did not prefill

    def __len__(self) -> int:
        return len(self._entries)

    def share(self, adapter: str | None, prompt: list[int], seq: int) -> int:
        """Copy the longest cached prefix of ``prompt`` into the empty ``seq``; how many tokens it holds."""
        best: _Entry | None = None
        shared = 0
        for entry in self._entries:
            if entry.adapter == adapter:
                n = common_prefix(entry.tokens, prompt)
                if n > shared:
                    best, shared = entry, n
        shared = min(shared, len(prompt) - 1)  # the last prompt token runs: its logits pick the first token
        if best is None or shared < MIN_SHARED_TOKENS:
            return 0
        self._worker.context.copy(best.seq, seq, shared)
        best.used = next(self._tick)
        self.hits += 1
        self.shared_tokens += shared
        return shared

    def store(self, adapter: str | None, prompt: list[int], seq: int) -> None:
        """Keep the prompt just prefilled on ``seq`` (its first ``len(prompt)`` cells) for later requests."""
        tokens = tuple(prompt)
        for entry in self._entries:
            if entry.adapter == adapter and entry.tokens[:len(tokens)] == tokens:
                entry.used = next(self._tick)  # already held (this prompt or a longer one)
                return
        # An entry this prompt extends adds nothing once the prompt is kept: replace it.
        for entry in [e for e in self._entries if e.adapter == adapter and tokens[:len(e.tokens)] == e.tokens]:
            self._evict(entry)
        if not self.capacity:
            return
        if not self._free:
            self._evict(min(self._entries, key=lambda e: e.used))
        worker = self._worker
        if not self.make_room(len(tokens)):
            return  # the cache is full of live generations and sessions: not worth evicting them
        entry = _Entry(seq=self._free.pop(), adapter=adapter, tokens=tokens, used=next(self._tick))
        worker.context.copy(seq, entry.seq, len(tokens))
        worker.kv_used += len(tokens)
        self._entries.append(entry)

    def make_room(self, tokens: int) -> bool:
        """Evict entries (least recently used first) until ``tokens`` more KV cells fit; whether they do."""
        worker = self._worker
        while worker.kv_used + tokens > worker.kv_tokens and self._entries:
            self._evict(min(self._entries, key=lambda e: e.used))
        return worker.kv_used + tokens <= worker.kv_tokens

    def forget_adapter(self, adapter: str) -> None:
        """Drop the prefixes computed under ``adapter`` (unloaded, or replaced by other weights)."""
        for entry in [e for e in self._entries if e.adapter == adapter]:
            self._evict(entry)

    def _evict(self, entry: _Entry) -> None:
        self._entries.remove(entry)
        self._worker.context.forget(entry.seq)
        self._worker.kv_used -= len(entry.tokens)
        self._free.append(entry.seq)
