"""What the ``merge`` strategy needs from its node, as a port (the strategy itself does no I/O).

The strategy decides *which* adapters to merge and with which weights, from the
signed records it sees; the node (coordinator/merging.py) fetches them by CID,
merges them, caches the result by content and loads it into its own expert.
Tests plug an in-memory port in, like the pool's transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# peft's add_weighted_adapter combinations (node/expert/model/merge.py METHODS; a test keeps them equal).
METHODS = ("linear", "ties", "dare_ties", "dare_linear")
# Name prefix of the merged adapters an expert serves: the default choice of inputs skips them
# (merging merges of the same inputs again would only drift); naming one still works.
MERGED_PREFIX = "merged-"


@dataclass(frozen=True, slots=True)
class MergeRequest:
    """Merge these adapters (CIDs, in order) with these weights; ``providers`` are peers that hold them."""

    refs: tuple[str, ...]
    weights: tuple[float, ...]
    method: str
    density: float
    providers: tuple[str, ...] = ()
    weights_from: str = "given"


@dataclass(frozen=True, slots=True)
class MergedAdapter:
    """A merged adapter this node now serves: its name on the local expert and its content id."""

    name: str
    cid: str
    base: str  # the base model's content id (CID, else sha256)
    cached: bool  # True: the merge was on disk already (no re-merge)
    loaded: bool  # True: it was loaded into the expert by this request (False: already served)
    seconds: float  # fetch + merge + load, as this request saw it


class MergePort(Protocol):
    def local_base(self) -> str | None:
        """The content id of the base model this node's expert serves (None: it serves none)."""
        ...

    async def similarities(self, text: str, documents: Sequence[str]) -> list[float]:
        """Relevance of ``text`` to each document (MiniLM, else bag-of-words)."""
        ...

    async def searched_weights(self, refs: Sequence[str], method: str) -> tuple[float, ...] | None:
        """Weights a ``node merge --search`` on this node found for exactly these inputs, if cached."""
        ...

    async def prepare(self, request: MergeRequest) -> MergedAdapter:
        """Fetch, merge (or reuse the cached merge), publish and serve; raises QueryFailed."""
        ...
