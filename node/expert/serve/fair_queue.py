"""Fair admission to an expert's queue: round robin over requesters (issue 22, attack 10).

The worker's queue was first come, first served: 5 identities x 16 valid infer
streams kept it full, and an honest request waited behind all of them (over 60
s) or was refused ``busy``.  Each job now carries its ``requester`` (the peer of
its stream; ``""`` for this node's own calls), and the queue is kept in round
robin order: a requester's k-th waiting job goes after every other requester's
k-th, so a newcomer's first request waits behind at most one job per requester,
however many each has queued.  When the queue is full, a newcomer takes the
place of the newest job of the requester holding the most (that job is refused
``busy``) as long as that requester holds more than the newcomer would: one
requester cannot take every slot.

Pure functions on the worker's deque, called with its lock held.
"""

from __future__ import annotations

import collections
from collections import Counter

from .jobs import Job


def insert_fairly(pending: collections.deque[Job], job: Job) -> int:
    """Insert ``job`` in round robin order (FIFO within a round); return its index."""
    turn = sum(1 for queued in pending if queued.requester == job.requester)  # its round: 0 for a first job
    seen: Counter[str] = Counter()
    position = len(pending)
    for index, queued in enumerate(pending):
        if seen[queued.requester] > turn:
            position = index
            break
        seen[queued.requester] += 1
    pending.insert(position, job)
    return position


def make_room_for(pending: collections.deque[Job], job: Job) -> Job | None:
    """The queue is full: remove and return the newest job of the requester holding the most
    queued jobs when it holds more than ``job``'s requester would after admission; else ``None``
    (the newcomer is the one refused)."""
    held = Counter(queued.requester for queued in pending)
    if not held:
        return None
    heaviest, count = max(held.items(), key=lambda item: item[1])
    if heaviest == job.requester or count <= held[job.requester] + 1:
        return None
    newest = next(queued for queued in reversed(pending) if queued.requester == heaviest)
    pending.remove(newest)
    return newest
