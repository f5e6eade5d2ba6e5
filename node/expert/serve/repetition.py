"""A completion that loops: the same sentence (or paragraph) again and again at its end.

Small models under greedy decoding fall into loops: SmolLM2-135M on llama.cpp repeats one
sentence until ``max_tokens`` (issue 18), which costs the whole token budget and buries the
answer.  :func:`repeat_at_end` finds such a loop in the text generated so far, so that the
completion can stop there with the repetition trimmed (detokenize.py).

The thresholds are conservative, because a false positive cuts a real answer.  The repeated
unit must come back verbatim, back to back, at the end of the text, with at least:

=================================  ========  ==============  ===========
a repeated ...                     chars     different words  copies
=================================  ========  ==============  ===========
phrase ("Il Coriobella, ")         8         2               8
sentence                           16        3               5
paragraph                          80        3               3
=================================  ========  ==============  ===========

(words: two or more letters).  So digits ("1111111111"), rules ("-----", "| 0 | 0 |"), short code
lines (``x += 1``) and one-word chants ("ha ha ha") never count, a list's items differ, and
code repeats a statement two or three times, not five.

What it cannot tell apart: an answer asked to repeat a sentence five or more times ("write X ten
times") is cut after the first copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (unit characters, different words, copies) from the most to the least demanding unit.
TIERS = ((80, 3, 3), (16, 3, 5), (8, 2, 8))
MIN_UNIT = min(chars for chars, _, _ in TIERS)
MIN_WORDS = min(words for _, words, _ in TIERS)
MAX_UNIT = 400  # longer units are not looked for (each token searches this far back)
MAX_WORD = 24  # characters a word may have for a cut to move to its start
PROBE = 8  # a tail that repeats this many characters at some period is checked further

_WORD = re.compile(r"[^\W\d_]{2,}")


@dataclass(frozen=True, slots=True)
class Repeat:
    """The text's end repeats with period ``unit``: ``repeated`` characters equal the ones ``unit`` before."""

    unit: int
    repeated: int
    words: int  # different words in the unit

    @property
    def copies(self) -> float:
        return 1 + self.repeated / self.unit

    def is_loop(self) -> bool:
        return any(self.unit >= chars and self.words >= words and self.copies >= copies
                   for chars, words, copies in TIERS)


def repeat_at_end(text: str) -> Repeat | None:
    """The longest repetition at the end of ``text`` whose unit has words (see the module doc).

    ``text[-repeated:]`` is a repetition of the unit ``text[-repeated - unit:-repeated]``, so
    ``text[:-repeated]`` is the text with the unit said once.
    """
    n = len(text)
    best: Repeat | None = None
    probe = text[n - PROBE:]
    # Periods at which the last PROBE characters occurred before (str.rfind: few, and found in C).
    end = n - MIN_UNIT
    low = max(0, n - PROBE - MAX_UNIT)
    while len(probe) == PROBE and (at := text.rfind(probe, low, end)) >= 0:
        end = at + PROBE - 1
        unit = n - PROBE - at
        repeated = _repeated_length(text, unit)
        if best is not None and repeated <= best.repeated:
            continue
        # The words of a whole copy, whatever its rotation ("l Coriobella, i" is "il Coriobella, ").
        words = len(set(_WORD.findall(text[n - repeated - unit: n - repeated + unit].lower())))
        if words >= MIN_WORDS:
            best = Repeat(unit, repeated, words)
    return best


def kept_length(text: str, repeat: Repeat) -> int:
    """Where to cut ``text`` so that the repeated unit is said once: after its first copy, moved back
    to the start of a word it would split ("Il Coriobella, i|l Coriobella" keeps "Il Coriobella, ")."""
    cut = len(text) - repeat.repeated
    start = cut
    while start > cut - min(repeat.unit - 1, MAX_WORD) and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    return start if not (text[start - 1].isalnum() and text[start].isalnum()) else cut


def held_back(text: str) -> int:
    """How many characters at the end of ``text`` to hold back as the possible start of a loop's next copy.

    A repeat of :data:`PROBE` characters or more is measured by :func:`repeat_at_end`; this covers
    the shorter start: the longest tail under PROBE characters that already occurred between
    :data:`MIN_UNIT` and :data:`MAX_UNIT` characters before (usually a few characters of prose).
    """
    n = len(text)
    for length in range(min(PROBE - 1, n), 0, -1):
        if text.rfind(text[n - length:], max(0, n - length - MAX_UNIT), n - MIN_UNIT) >= 0:
            while length < min(n, PROBE + MAX_WORD) and text[n - length - 1].isalnum() and text[n - length].isalnum():
                length += 1  # and the rest of its word: a loop is cut at a word's start (kept_length)
            return length
    return 0


def _repeated_length(text: str, unit: int) -> int:
    """How many characters at the end of ``text`` equal the character ``unit`` before them."""
    n = len(text)
    repeated = 0
    step = unit  # compare whole periods while they match, then character by character
    while repeated + step <= n - unit and text[n - repeated - step: n - repeated] == \
            text[n - repeated - step - unit: n - repeated - unit]:
        repeated += step
    while repeated < n - unit and text[n - repeated - 1] == text[n - repeated - 1 - unit]:
        repeated += 1
    return repeated
