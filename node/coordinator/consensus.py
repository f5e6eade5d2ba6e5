"""Consensus evidence: did each member of a fan-out agree with a clear majority of the others?

Spot checks (reputation.py) know the right answer but are rare and costly; a
fan-out (vote, moa, select, judge, debate) already asks several experts the same
question, so every such query is free evidence.  For each member we look at the
*other* members' extracted answers (``aggregate.extract``, the vote's own
normalisation); when a clear majority of them (:data:`MAJORITY` of at least
:data:`MIN_OTHERS` answers) agree on one key, the member either agreed with it
or not.  Honest experts, especially ones sharing a base model, agree often; a
liar that always picks a wrong option disagrees with every majority that is
right.  ``Reputation`` keeps decaying per-peer counts of these observations and
demotes a peer that agrees implausibly less often than its peers do.

Why "of the others" and "clear": a member never votes on itself, and a single
attacker among the others can only *make* a majority when the honest members are
already split (2 against 1 with the attacker joining one side); it cannot
out-vote two honest members who agree.  What one coalition holding the majority
of a fan-out can do is listed in docs/security.md.

Only first-round answers count: later moa layers and debate rounds have seen
each other's answers, so their agreement says nothing about independence.
"""

from __future__ import annotations

from collections import Counter

from protocol import Trace

from .aggregate import AnswerKind, extract

# Roles whose first-round answers are independent answers to the client's question.
MEMBER_ROLES = frozenset({"proposer", "sampler", "debater"})
# A majority of the other members is "clear" when it holds this share of them ...
MAJORITY = 2 / 3
# ... and there are at least this many other members with an answer.
MIN_OTHERS = 2


def member_answers(trace: Trace) -> dict[str, str]:
    """Each member peer's first-round answer key (a peer with several samples: its most common key)."""
    kind = trace.params.get("kind")
    shape: AnswerKind | None = kind if kind in ("number", "option", "text") else None  # type: ignore[assignment]
    keys: dict[str, list[str]] = {}
    for step in trace.steps:
        if step.role not in MEMBER_ROLES or step.round != 0 or step.status != "ok" or step.call != "generate":
            continue
        if step.continues is not None:  # stitched from two experts after a failover: nobody's own answer
            continue
        key = step.answer if step.answer is not None else extract(step.output, shape)
        keys.setdefault(step.peer, []).append(key)
    return {peer: Counter(found).most_common(1)[0][0] for peer, found in keys.items()}


def majority(keys: list[str]) -> str | None:
    """The key a clear majority of ``keys`` agrees on (empty keys never make one), else None."""
    answered = [k for k in keys if k]
    if len(answered) < MIN_OTHERS:
        return None
    key, count = Counter(answered).most_common(1)[0]
    return key if count >= 2 and count >= MAJORITY * len(answered) - 1e-9 else None


def observations(answers: dict[str, str]) -> list[tuple[str, bool]]:
    """``(peer, agreed)`` for each member whose other members hold a clear majority.

    An empty key (nothing extractable) never makes a majority, and counts as
    disagreeing when the member's others do agree.
    """
    out: list[tuple[str, bool]] = []
    for peer, key in answers.items():
        agreed = majority([k for p, k in answers.items() if p != peer])
        if agreed is not None:
            out.append((peer, key == agreed))
    return out
