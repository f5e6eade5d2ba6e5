"""Pure aggregation: pull a comparable answer out of free text, vote, measure agreement, decide quorum.

Extraction is for voting, not grading (the evaluation's task scorer lives in
node/evaluation/): it must map two phrasings of the same answer to one key.
Three shapes cover the benchmark tasks (shared/data/tasks/README.md): a number
(math), an option letter (multiple choice), or a short text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?"
_MARKED = re.compile(
    r"(?:####|\\boxed\{|answer(?: is)?\s*[:=]?|result(?: is)?\s*[:=]|=)\s*\**\s*\$?(" + _NUMBER + ")", re.IGNORECASE
)
_ANY_NUMBER = re.compile(_NUMBER)
_OPTION_MARKED = re.compile(r"(?:answer|option|choice)(?: is)?\s*[:=]?\s*\(?\**([A-J])\b\)?", re.IGNORECASE)
# A reply that starts with the letter: "B", "B.", "(c) because"; not "I think" or "a dog" (A-H only,
# lower case only with punctuation).
_OPTION_ALONE = re.compile(r"^\s*\(?([A-H])[).:]?(?:\s|$)|^\s*\(?([a-h])[).:]")
_OPTION_PAREN = re.compile(r"\(([A-J])\)")
_WORD = re.compile(r"[^\w\s]")

AnswerKind = Literal["number", "option", "text"]


def normalize_number(raw: str) -> str:
    """``"1,000.50"`` -> ``"1000.5"``, ``"3.0"`` -> ``"3"``, ``"1/2"`` -> ``"0.5"``: one key per value."""
    raw = raw.replace(",", "").strip()
    try:
        if "/" in raw:
            num, den = raw.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        return raw
    if not math.isfinite(value):
        return raw
    if value == int(value):
        return str(int(value))
    return f"{value:.6g}"


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, single spaces, no leading article: ``"The Paris."`` -> ``"paris"``."""
    words = _WORD.sub(" ", text.lower()).split()
    if words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)[:64]


def extract(text: str, kind: AnswerKind | None = None) -> str:
    """The answer in ``text`` as a vote key; ``kind`` forces a shape, ``None`` guesses it.

    Guessing prefers an explicitly marked answer ("the answer is 42", "#### 42",
    "Answer: B"), then a lone option letter, then the last number, then the
    first line as short text.
    """
    text = text.strip()
    if kind in (None, "option"):
        match = _OPTION_MARKED.search(text) or _OPTION_ALONE.match(text)
        if match is None and kind == "option":
            match = _OPTION_PAREN.search(text)
        if match:
            return next(g for g in match.groups() if g).upper()
        if kind == "option":
            return normalize_text(text.splitlines()[0] if text else "")
    if kind in (None, "number"):
        marked = _MARKED.findall(text)
        if marked:
            return normalize_number(marked[-1])
        numbers = _ANY_NUMBER.findall(text)
        if numbers:
            return normalize_number(numbers[-1])
        if kind == "number":
            return normalize_text(text.splitlines()[0] if text else "")
    first = next((line for line in text.splitlines() if line.strip()), "")
    return normalize_text(first)


@dataclass(frozen=True, slots=True)
class Ballot:
    """One candidate answer: its vote key, its weight, and a tie-breaker (e.g. the expert's dev score)."""

    key: str
    weight: float = 1.0
    tiebreak: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    winner: str  # the winning key ("" when there were no valid ballots)
    votes: float  # weight behind the winner
    total: float  # weight of all ballots
    index: int  # the ballot whose text is returned: the winner's with the highest tie-breaker

    @property
    def share(self) -> float:
        return self.votes / self.total if self.total else 0.0


def vote(ballots: Sequence[Ballot]) -> Decision:
    """Weighted majority over vote keys; ties go to the higher tie-breaker, then the earlier ballot.

    The decision's ``index`` is the winning key's ballot with the highest tie-breaker (the
    earliest among equals): whose full text is returned.
    Empty keys (nothing extractable) do not vote, unless every ballot is empty.
    """
    valid = [(i, b) for i, b in enumerate(ballots) if b.key] or list(enumerate(ballots))
    if not valid:
        return Decision("", 0.0, 0.0, -1)
    weight: dict[str, float] = {}
    best_tiebreak: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, b in valid:
        weight[b.key] = weight.get(b.key, 0.0) + b.weight
        if b.tiebreak > best_tiebreak.get(b.key, -math.inf):
            best_tiebreak[b.key] = b.tiebreak
            first[b.key] = i
    winner = max(weight, key=lambda k: (weight[k], best_tiebreak[k], -first[k]))
    return Decision(winner, weight[winner], sum(weight.values()), first[winner])


def confidence(keys: Sequence[str]) -> tuple[str, float]:
    """The majority key among one expert's samples and its share (SLM-MUX's confidence)."""
    decision = vote([Ballot(k) for k in keys])
    return decision.winner, decision.share


QuorumState = Literal["wait", "grace", "done"]


def quorum(ok: int, failed: int, total: int, k_min: int) -> QuorumState:
    """What a fan-out does next, given how many calls answered and failed so far.

    ``done``: every call finished (or no more answers can come).  ``grace``:
    ``k_min`` answers are in, wait a short grace period for the rest.
    ``wait``: keep waiting for answers.
    """
    if ok + failed >= total:
        return "done"
    if ok >= min(k_min, total):
        return "grace"
    return "wait"


def mean_token_probability(logprobs: Sequence[float]) -> float:
    """exp of the mean log-probability: the cascade's confidence in an answer (0 for no tokens)."""
    if not logprobs:
        return 0.0
    return math.exp(sum(logprobs) / len(logprobs))
