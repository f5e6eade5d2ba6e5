"""Quotas on what a node fetches and writes: per fetch, and for content fetched on others' behalf.

A DAG may link one block many times: a 3 GiB file built from one repeated leaf
cost 1 MiB to download and wrote 3.1 GB in 8 s, and the only limit was the free
disk less 1 GiB (issue 22).  So every fetch runs under a byte quota that its
root's declared size must fit before any child is asked for (fetch.check_room)
and that the export checks again before it writes:

* **per fetch** (``storage.max_fetch_mib``, ``node fetch --max-size``): the
  most one fetch may declare, whoever asked for it;
* **per requester** (``storage.peer_quota_mib`` per hour): content this node
  fetches because a remote peer asked (a ``merge`` query naming adapter CIDs),
  counted per peer over a sliding hour;
* **for others** (``storage.others_quota_mib`` per hour): the same, all remote
  peers together, so many identities cannot add up to a full disk;
* **expansion** (``storage.max_expansion``, ``node fetch --max-expansion``):
  content over 256 MiB may not declare more than this many times the bytes of
  its distinct blocks (exporter.check_expansion): the repeated-leaf file.

The refusal (:class:`~node.storage.fetch.DagTooLarge`) names the quota and the
setting that raises it.  Pure bookkeeping: the clock is
passed in.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .exporter import MAX_EXPANSION
from .fetch import MAX_DAG_BYTES

MIB = 1024 * 1024
# One fetch: a large open-weights checkpoint fits; a repeated-leaf bomb declaring terabytes does not.
DEFAULT_MAX_FETCH_MIB = 64 * 1024
# Content fetched because remote peers asked, per sliding hour: one peer, and all of them together.
DEFAULT_PEER_QUOTA_MIB = 1024
DEFAULT_OTHERS_QUOTA_MIB = 8 * 1024
WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class Allowance:
    """The most one fetch may declare now, and the quota (with its setting) that sets that limit."""

    bytes: int
    name: str


@dataclass
class FetchQuota:
    """Per-fetch, per-requester and total-for-others byte quotas over a sliding window."""

    max_fetch_bytes: int = DEFAULT_MAX_FETCH_MIB * MIB
    per_requester_bytes: int = DEFAULT_PEER_QUOTA_MIB * MIB
    for_others_bytes: int = DEFAULT_OTHERS_QUOTA_MIB * MIB
    window_s: float = WINDOW_S
    max_expansion: float | None = MAX_EXPANSION  # exporter.check_expansion (None: off)
    clock: Callable[[], float] = time.monotonic
    _spent: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    @classmethod
    def from_mib(cls, max_fetch_mib: float, peer_quota_mib: float, others_quota_mib: float,
                 max_expansion: float | None = MAX_EXPANSION) -> FetchQuota:
        return cls(int(max_fetch_mib * MIB), int(peer_quota_mib * MIB), int(others_quota_mib * MIB),
                   max_expansion=max_expansion)

    def _used(self, requester: str | None) -> int:
        cutoff = self.clock() - self.window_s
        total = 0
        for key, entries in list(self._spent.items()):
            while entries and entries[0][0] < cutoff:
                entries.popleft()
            if not entries:
                del self._spent[key]
            elif requester is None or key == requester:
                total += sum(n for _, n in entries)
        return total

    def allowance(self, requester: str | None = None, *, cap: int | None = None, cap_name: str = "") -> Allowance:
        """What one fetch may declare now.  ``requester``: the remote peer it is fetched for (None:
        this node's own user).  ``cap``: a tighter limit of the caller's (e.g. what an adapter of
        this base can weigh), named ``cap_name``."""
        options = [Allowance(min(self.max_fetch_bytes, MAX_DAG_BYTES),
                             f"per-fetch quota of {self.max_fetch_bytes:,} bytes "
                             "(storage.max_fetch_mib; node fetch --max-size)")]
        if cap is not None:
            options.append(Allowance(cap, cap_name or f"limit of {cap:,} bytes"))
        if requester is not None:
            mine = max(0, self.per_requester_bytes - self._used(requester))
            others = max(0, self.for_others_bytes - self._used(None))
            options.append(Allowance(mine, f"per-requester quota of {self.per_requester_bytes:,} bytes per "
                                           f"{self.window_s:g} s for {requester[-12:]} ({mine:,} left; "
                                           f"storage.peer_quota_mib)"))
            options.append(Allowance(others, f"quota of {self.for_others_bytes:,} bytes per {self.window_s:g} s "
                                             f"fetched for other peers ({others:,} left; storage.others_quota_mib)"))
        return min(options, key=lambda a: a.bytes)

    def charge(self, requester: str | None, nbytes: int) -> None:
        """``nbytes`` were fetched (and written) for ``requester``; nothing is counted for the node's own user."""
        if requester is not None and nbytes > 0:
            self._spent.setdefault(requester, deque()).append((self.clock(), nbytes))
