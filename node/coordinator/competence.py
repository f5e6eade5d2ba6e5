"""Verified competence: what an expert has shown it can do, per task, and what its vote is worth.

Two kinds of evidence exist in the network (reputation.py): the signed
self-evaluation in an expert's record (``evals``: task, dev accuracy, a claim
any peer can re-check) and this node's spot checks of it on known-answer dev
items (right of checked, per task, decaying).  ``verified_accuracy`` combines
them as a Beta posterior: the claim is a prior worth :data:`CLAIM_ITEMS`
checked items, so a handful of spot checks already outweighs a claim they
contradict, while an unchecked claim still ranks (and a demoted over-claimer is
banned by reputation anyway).

``vote_weight`` is the weight of an expert's ballot that makes a weighted
majority the most likely answer for independent voters (Nitzan and Paroush,
1982): the log-odds of being right against a given wrong answer,
``log(p (K-1) / (1-p))`` with K answer options.  An expert nobody has measured
votes as one at :data:`UNKNOWN_ACCURACY`; weights are floored so a weak expert
still breaks ties among the unknown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from protocol import CapabilityRecord

# A signed self-evaluation claim counts as this many spot-checked items of the prior.
CLAIM_ITEMS = 4.0
# The accuracy assumed for a vote nobody has measured (uninformative, as an even bet).
UNKNOWN_ACCURACY = 0.5
# Answer options assumed for free-text and numeric answers (errors spread over many wrong keys)
# and for multiple choice (the benchmark tasks' four options).
TEXT_OPTIONS = 10
CHOICE_OPTIONS = 4
MIN_WEIGHT = 0.05
# An expert's competence elsewhere counts this much on a task it has shown nothing on.
UNSHOWN_DISCOUNT = 0.8

Observed = Callable[[str, str], tuple[float, float]]  # (peer id, task) -> (right, checked) by spot checks


def verified_accuracy(claimed: float | None, right: float, checked: float) -> float | None:
    """Posterior mean accuracy from a claim (or none) and spot checks; None without either."""
    if claimed is None and checked <= 0:
        return None
    if claimed is None:  # spot checks only: a uniform prior (one right, one wrong)
        return (right + 1.0) / (checked + 2.0)
    return (right + CLAIM_ITEMS * claimed) / (checked + CLAIM_ITEMS)


def claims(record: CapabilityRecord) -> dict[str, float]:
    """The dev accuracy a record claims per task (its base model or any adapter: the best)."""
    out: dict[str, float] = {}
    for e in record.evals:
        if e.split == "dev":
            out[e.task] = max(e.accuracy, out.get(e.task, 0.0))
    return out


def task_competence(record: CapabilityRecord, tasks: Sequence[str], observed: Observed | None) -> float | None:
    """The best verified accuracy of ``record``'s expert on one of ``tasks`` (None: nothing shown)."""
    claimed = claims(record)
    best: float | None = None
    for task in tasks:
        right, checked = observed(record.peer_id, task) if observed is not None else (0.0, 0.0)
        value = verified_accuracy(claimed.get(task), right, checked)
        if value is not None and (best is None or value > best):
            best = value
    return best


def generalist_competence(record: CapabilityRecord, observed: Observed | None,
                          checked_tasks: Iterable[str] = ()) -> float | None:
    """Mean verified accuracy over every task the expert claims or was checked on (None: none)."""
    tasks = set(claims(record)) | set(checked_tasks)
    values = [v for v in (task_competence(record, [t], observed) for t in sorted(tasks)) if v is not None]
    return sum(values) / len(values) if values else None


def competences(records: Sequence[CapabilityRecord], tasks: Sequence[str], observed: Observed | None = None,
                checked_tasks: Iterable[str] = ()) -> dict[str, float | None]:
    """Per peer: verified accuracy on the query's ``tasks``; for an expert that has shown none on
    them, its generalist competence discounted by :data:`UNSHOWN_DISCOUNT` (so with no task named,
    or nobody shown on it, the best generalist ranks first; None: nothing shown at all)."""
    checked = list(checked_tasks)
    out: dict[str, float | None] = {}
    for r in records:
        on_task = task_competence(r, tasks, observed) if tasks else None
        if on_task is not None:
            out[r.peer_id] = on_task
            continue
        general = generalist_competence(r, observed, checked)
        out[r.peer_id] = None if general is None else general * (UNSHOWN_DISCOUNT if tasks else 1.0)
    return out


def vote_weight(accuracy: float | None, options: int = TEXT_OPTIONS) -> float:
    """The optimal weighted-majority weight of a voter right with probability ``accuracy``."""
    p = UNKNOWN_ACCURACY if accuracy is None else min(0.99, max(0.01, accuracy))
    return max(MIN_WEIGHT, math.log(p * (options - 1) / (1.0 - p)))


def options_of(kind: str | None, keys: Iterable[str] = ()) -> int:
    """How many answer options a vote of this shape has (letters: four; else many)."""
    if kind == "option" or (kind in (None, "auto") and (found := list(keys)) and all(
            len(k) == 1 and k.isalpha() for k in found if k)):
        return CHOICE_OPTIONS
    return TEXT_OPTIONS


def as_table(values: Mapping[str, float | None]) -> str:
    """``peer:0.83, peer2:-`` for a decision line."""
    return ", ".join(f"{peer[-6:]}:{'-' if v is None else f'{v:.2f}'}" for peer, v in values.items())
