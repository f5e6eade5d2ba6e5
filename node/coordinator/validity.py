"""Is a free-form aggregate (moa's aggregator, a debate's summary, a composed answer) a valid answer?

Small models asked to synthesise often do not: measured on SmolLM2-135M (issue
18), moa's aggregator answered 2 of 30 easy questions where its members got
11-23, writing "I'm ready to assist you", empty text, or the instructions back.
An aggregate that is not an answer is replaced by the members' majority
(strategies/aggregation.py), and the trace says so.

The checks are cheap and conservative (pure string work): empty, a refusal or
an offer to help, an echo of the role prompt's own instructions, and, for a
question whose members clearly agree (``consensus.majority``), an aggregate that
contradicts them.  A small aggregator that overrules a clear majority of its
members is far more often wrong than right (the issue's measurements); a team
that wants its aggregator to overrule can set the strategy's
``trust_majority=false``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .aggregate import Ballot, extract, normalize_text, vote
from .consensus import MAJORITY

# Replies that refuse, stall or offer help instead of answering (lower case, at the start or alone).
_REFUSALS = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i can not|i'?m unable|i am unable|i don'?t know|"
    r"as an ai|i'?m (just )?an ai|i'?m ready|i am ready|i'?d be (happy|glad) to|i would be (happy|glad) to|"
    r"how can i (help|assist)|what can i (help|do)|sure[,!.]? (here|i can)|please provide|could you (please )?"
    r"(provide|clarify)|you have(n't| not) (asked|provided)|there is no question)", re.IGNORECASE)
_OFFERS = re.compile(r"\b(ready to (assist|help)|happy to (assist|help)|how can i (assist|help) you)\b", re.IGNORECASE)

# Phrases of the role prompts (prompts.py): an aggregate that repeats them echoes its instructions.
INSTRUCTION_PHRASES = (
    "some may be wrong", "answers from other assistants", "final answers after a discussion",
    "your previous answer", "background knowledge from", "reply with the correct answer only",
    "give your updated answer", "as additional advice", "split into sub-questions", "answer 1:", "answer 2:",
    "knowledge 1:", "sub-question 1:",
)


def invalid_reason(text: str, *, agreed: str | None = None, kind: str | None = None) -> str | None:
    """Why ``text`` is not a valid aggregate (None: it is one).

    ``agreed``: the key of the members' clear majority, if they have one (``clear_majority``);
    an aggregate that contradicts it is invalid.  ``kind``: the answer shape ("number",
    "option", "text", None = guess).
    """
    stripped = text.strip()
    if not stripped or not normalize_text(stripped):
        return "empty"
    if _REFUSALS.match(stripped) or (_OFFERS.search(stripped) and len(stripped) < 200):
        return "a refusal or an offer to help instead of an answer"
    lowered = stripped.lower()
    echoed = [phrase for phrase in INSTRUCTION_PHRASES if phrase in lowered]
    if echoed:
        return f"an echo of its instructions ({echoed[0]!r})"
    if agreed and not agrees(extract(stripped, kind), agreed, stripped):  # type: ignore[arg-type]
        return f"contradicts the members' clear majority {agreed!r}"
    return None


def clear_majority(ballots: Sequence[Ballot]) -> str | None:
    """The key holding :data:`consensus.MAJORITY` of the ballots' weight, among two or more answers.

    Weights are the members' verified competence (competence.py), so a proven specialist
    outweighs two members that share a wrong answer; with no competence known every ballot
    weighs the same and this is the plain two-thirds majority of consensus.py.
    """
    answered = [b for b in ballots if b.key]
    if len(answered) < 2:
        return None
    decision = vote(answered)
    return decision.winner if decision.share >= MAJORITY - 1e-9 else None


def agrees(key: str, agreed: str, text: str) -> bool:
    """Does an aggregate (``key`` extracted from ``text``) say the majority's ``agreed`` answer?

    Equal keys agree; a short text key (a fact, not a number or letter) also agrees when its
    words appear in the aggregate's text, so a rephrasing ("Paris is the capital") is no contradiction.
    """
    if key == agreed:
        return True
    if agreed.replace(".", "").replace("-", "").isdigit() or len(agreed) == 1:
        return False
    return f" {agreed} " in f" {normalize_text(text)} " or f" {key} " in f" {agreed} "
