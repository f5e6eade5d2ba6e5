"""Incremental detokenization with stop strings.

Decoding token by token breaks multi-byte characters and merges (a token may
be half of a UTF-8 character), so we decode the whole completion so far and
emit the new suffix.  Text is held back while it could still turn into a stop
string (``"\\n\\nUser"`` must never leak ``"\\n\\nUs"`` to the client) or ends in
an incomplete character (U+FFFD from a partial byte sequence).

The loop guard (repetition.py) ends a completion whose tail repeats the same sentence
over and over, keeping one copy (``stop_reason == "repetition"``).  Text that repeats
what came shortly before is held back while it could still be the start of such a loop (at
most a few characters of ordinary prose), so the client never receives a copy that is then
trimmed.  Both engines' workers use this
class, so both get the guard; a session (fusion: the coordinator picks every token) does not.
"""

from __future__ import annotations

from typing import Any, Literal

from .repetition import held_back, kept_length, repeat_at_end

_REPLACEMENT = "\ufffd"


class CompletionText:
    """The text of one completion, released to the client as it becomes final."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = (), *, loop_guard: bool = True) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._loop_guard = loop_guard
        self._token_ids: list[int] = []
        self._released = 0  # characters of the decoded text already handed out
        self._decoded = ""
        self.stopped = False  # a stop string or a loop was found; the text ends before it
        self.stop_reason: Literal["stop", "repetition"] = "stop"  # which of the two

    @property
    def text(self) -> str:
        """Everything released so far (after :meth:`finish`, the whole completion)."""
        return self._decoded[: self._released]

    def push(self, token_id: int) -> str:
        """Add one generated token; return the newly final text (maybe empty)."""
        self._token_ids.append(token_id)
        self._decoded = self._tokenizer.decode(self._token_ids, skip_special_tokens=True)
        start = max(0, self._released - max((len(s) for s in self._stop), default=0))
        cut = min((i for i in (self._decoded.find(s, start) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._decoded = self._decoded[:cut]
            return self._release(max(cut, self._released))
        end = len(self._decoded)
        if self._decoded.endswith(_REPLACEMENT):
            end -= 1
        settled = self._decoded[:end]  # one copy per token, shared by the checks below
        held = self._stop_prefix_length(settled)
        repeat = repeat_at_end(settled) if self._loop_guard else None
        kept = end if repeat is None else kept_length(settled, repeat)
        if repeat is not None and repeat.is_loop():
            self.stopped, self.stop_reason = True, "repetition"
            # The looping unit said once (what was held back since its second copy began).
            self._decoded = self._decoded[: max(kept, self._released)]
            return self._release(len(self._decoded))
        if self._loop_guard:  # what may be the start of a loop's next copy is not released yet
            held = max(held, end - kept, held_back(settled))
        return self._release(max(end - held, self._released))

    def finish(self) -> str:
        """Release whatever was held back (generation ended without a stop string)."""
        return self._release(len(self._decoded))

    def _release(self, end: int) -> str:
        piece = self._decoded[self._released : end]
        self._released = end
        return piece

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
