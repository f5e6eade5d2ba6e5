"""The node side of the ``merge`` strategy: fetch adapters by CID, merge, cache, publish, serve.

Everything heavy is what ``node merge`` does (node/training/merging.py,
node/expert/model/content.py): inputs come through the node's block store, the merge is
cached on disk by its spec (inputs, weights, method, density) under
``<data_dir>/merged/<key>``, so a second identical query reuses it without loading a
model.  The merged directory is then published (content-addressed: its UnixFS CID,
pinned and provided) and loaded into this node's own expert as one more adapter
(on the worker thread, node/expert/serve/live_adapters.py); the record is re-announced so
peers see, and can fetch, the merged adapter.

One merge of a given spec runs at a time (a per-spec lock): two identical queries
arriving together merge once.

What an anonymous query may make this node fetch and store (issue 22): each input
must declare at most what a LoRA adapter of this node's base can weigh
(merge.adapter_size_limit: rank <= 64 on every layer), checked when its DAG's root
arrives, before anything else is fetched or written; what it fetches is charged to
the asking peer's quota and to all remote peers' (node/storage/quota.py); and inputs
this query brought in are removed again, blocks and export, when the merge is refused.

The expert and storage packages are imported on use: a coordinator-only node never
loads them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from node.logs import event, get_logger

from .calls import QueryFailed
from .merge_port import MERGED_PREFIX, MergedAdapter, MergeRequest
from .requester import current_requester
from .semantic import Embedder

if TYPE_CHECKING:
    from node.app import Node
    from node.expert import ExpertService

log = get_logger("coordinator.merging")


class NodeMerging:
    """Implements :class:`~node.coordinator.merge_port.MergePort` for a running node."""

    def __init__(self, node: Node, embedder: Embedder) -> None:
        self._node = node
        self._embedder = embedder
        self._locks: dict[tuple[object, ...], trio.Lock] = {}
        self._cids: dict[Path, str] = {}  # merged dir -> its CID (published once per process)
        self._adapter_limit: int | None = None  # what an adapter of this node's base can weigh (bytes)

    def _expert(self) -> ExpertService | None:
        from node.expert import ExpertService

        service = self._node.service(ExpertService)
        if service is None or service.expert is None or service.local is None:
            return None
        return service

    def local_base(self) -> str | None:
        service = self._expert()
        return None if service is None else service.expert.content_id

    async def similarities(self, text: str, documents: Sequence[str]) -> list[float]:
        from node.expert.model.merge import bag_similarity

        sims = await self._embedder.text_similarities(text, documents)
        return sims if sims is not None else [bag_similarity(text, d) for d in documents]

    async def searched_weights(self, refs: Sequence[str], method: str) -> tuple[float, ...] | None:
        from node.expert.model.merge import find_searched

        root = self._node.config.data_path / "merged"
        return await trio.to_thread.run_sync(find_searched, root, list(refs), method)

    async def prepare(self, request: MergeRequest) -> MergedAdapter:
        service = self._expert()
        if service is None:
            raise QueryFailed("unavailable", "this node serves no expert to load a merged adapter into")
        key = (request.refs, tuple(round(w, 6) for w in request.weights), request.method, round(request.density, 6))
        lock = self._locks.setdefault(key, trio.Lock())
        began = time.monotonic()
        try:
            async with lock:
                return await self._prepare(service, request, began)
        finally:
            # Relevance weights differ per question: keep a spec's lock only while someone holds
            # or waits for it, or the table grows with every query.
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    async def _prepare(self, service: ExpertService, request: MergeRequest, began: float) -> MergedAdapter:
        from node.expert.model.content import ContentTooLarge, discard_content, fetch_adapters
        from node.expert.model.loader import ModelLoadError
        from node.expert.model.merge import MergeError, expert_adapter_size_limit
        from node.training.merging import merge_adapters

        node = self._node
        local_base = service.expert.content_id
        if self._adapter_limit is None:
            self._adapter_limit = await trio.to_thread.run_sync(expert_adapter_size_limit, service.expert)
        # Inputs this query brings in (not already here): nothing of them is kept if the merge is refused.
        fresh = [ref for ref in request.refs if not (node.config.data_path / "content" / ref).exists()]
        try:
            paths = await fetch_adapters(node, request.refs, peers=request.providers,
                                         requester=current_requester.get(), max_bytes=self._adapter_limit)
            result = await trio.to_thread.run_sync(lambda: merge_adapters(
                paths, list(request.refs), data_dir=node.config.data_path, name="merged", method=request.method,
                density=request.density, weights=request.weights, cache_dir=node.config.cache_path))
        except ContentTooLarge as exc:
            await discard_content(node, fresh)
            raise QueryFailed("too_large", str(exc)) from None
        except MergeError as exc:
            await discard_content(node, fresh)
            raise QueryFailed("bad_request", str(exc)) from None
        except (ModelLoadError, OSError) as exc:
            await discard_content(node, fresh)
            raise QueryFailed("unavailable", f"cannot merge the adapters: {exc}") from None
        base = result.card.get("base") or {}
        merged_base = base.get("cid") or base.get("sha256") or ""
        if merged_base and merged_base != local_base:
            await discard_content(node, fresh)
            raise QueryFailed("unavailable", f"the merged adapter is for base {merged_base}, but this node's "
                                             f"expert serves base {local_base}: ask a node that serves that base")
        cid = await self._publish(result.path)
        name = f"{MERGED_PREFIX}{cid[-12:]}"
        try:
            loaded = await service.add_adapter(name, result.path, cid)
        except ModelLoadError as exc:
            raise QueryFailed("unavailable", f"the merged adapter does not load on this node's expert: {exc}") from None
        if loaded:
            await node.announce_now()  # peers see the merged adapter (served, fetchable by CID)
        merged = MergedAdapter(name=name, cid=cid, base=merged_base or local_base, cached=result.cached,
                               loaded=loaded, seconds=round(time.monotonic() - began, 3))
        event(log, "adapters_merged", cid=cid, inputs=len(request.refs), method=request.method,
              cached=result.cached, loaded=loaded, seconds=merged.seconds)
        return merged

    async def _publish(self, path: Path) -> str:
        """The merged adapter's CID: imported, pinned and provided (the weights' sha256 without storage)."""
        from node.storage import StorageService

        if path in self._cids:
            return self._cids[path]
        storage = self._node.service(StorageService)
        if storage is None:
            from node.expert.model.model_cache import sha256_file

            cid = await trio.to_thread.run_sync(sha256_file, path / "adapter_model.safetensors")
        else:
            cid = str((await storage.publish(path)).cid)
        self._cids[path] = cid
        return cid
