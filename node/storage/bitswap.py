"""Bitswap serving and fetching on top of our block store, with the Kubo fix.

We speak bitswap for interoperability with IPFS peers (Kubo); between Mosaic nodes
the faster ``/mosaic/blocks/1`` is preferred (blocks_protocol.py).

Fix 1 (research/ipfs.md D, measured): py-libp2p 0.8.1 writes its replies to a
wantlist back on the *inbound* stream the wantlist came on; Kubo v0.22 never reads
blocks from that stream, so a Kubo fetch from us hung forever even for an 11-byte
block.  Sending the replies on a new outbound stream made Kubo fetch 100 MB at
42.5 MB/s.  We apply it as a subclass (not a process-wide monkeypatch), bounded by a
deadline so a peer that does not read cannot pin the handler.

Fix 2 (tests/interop/test_kubo.py): CIDv0 blocks get a proper bitswap 1.1 prefix
instead of an empty one, which Kubo rejects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio
from libp2p.bitswap.block_store import BlockStore as LibBlockStore
from libp2p.bitswap.cid import cid_to_bytes
from libp2p.bitswap.client import BitswapClient
from libp2p.peer.id import ID

from protocol.cid import CID, cid_from_bytes
from protocol.errors import ProtocolError

from ..logs import event, get_logger
from .blockstore import BlockStore, StorageError

if TYPE_CHECKING:
    from libp2p.abc import IHost

log = get_logger("storage.bitswap")

REPLY_DEADLINE = 30.0


def _to_cid(value: object) -> CID:
    return cid_from_bytes(cid_to_bytes(value))


class StoreAdapter(LibBlockStore):
    """py-libp2p's block-store interface over our on-disk :class:`BlockStore`.

    ``put_block`` verifies the hash again (bitswap verifies too, but this store is
    shared with every other path and must never hold a mislabelled block).
    """

    def __init__(self, store: BlockStore) -> None:
        self.store = store

    async def get_block(self, cid: object) -> bytes | None:
        try:
            return self.store.get(_to_cid(cid))
        except ProtocolError:
            return None

    async def put_block(self, cid: object, data: bytes) -> None:
        self.store.put(_to_cid(cid), data)

    async def has_block(self, cid: object) -> bool:
        try:
            return self.store.has(_to_cid(cid))
        except ProtocolError:
            return False

    async def delete_block(self, cid: object) -> None:
        self.store.delete(_to_cid(cid))

    def get_all_cids(self) -> list[bytes]:
        # Bitswap only uses this for debugging; enumerating a multi-GB store is not free.
        return []


# Bitswap 1.1+ block prefix of a CIDv0: version 0, dag-pb, sha2-256, 32 bytes.
CIDV0_PREFIX = bytes((0x00, 0x70, 0x12, 0x20))


class KuboCompatibleBitswap(BitswapClient):
    async def _send_wantlist_responses_inline(self, stream, peer_id, v100, v110, presences):
        """Reply on a new outbound stream (Kubo ignores replies on its inbound stream).

        Second fix, found by tests/interop: for a CIDv0 block py-libp2p sends an
        *empty* prefix in bitswap 1.1+ ``payload`` entries; Kubo cannot parse it and
        drops the block, so a Kubo fetch of a CIDv0 DAG (``ipfs add``'s default)
        stalled after the wantlist.  We send the real v0 prefix.
        """
        v110 = [(prefix or CIDV0_PREFIX, data) for prefix, data in v110]
        with trio.move_on_after(REPLY_DEADLINE):
            out = await self.host.new_stream(peer_id, [stream.get_protocol()])
            try:
                await super()._send_wantlist_responses_inline(out, peer_id, v100, v110, presences)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await out.close()


class Bitswap:
    """Owns a :class:`KuboCompatibleBitswap` bound to our store, for one host."""

    def __init__(self, host: IHost, store: BlockStore) -> None:
        self.host = host
        self.store = store
        self.client = KuboCompatibleBitswap(host, StoreAdapter(store))

    async def start(self, nursery: trio.Nursery) -> None:
        self.client.set_nursery(nursery)
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def get_blocks(self, cids: Sequence[CID], peer: str, *, timeout: float) -> dict[bytes, bytes]:
        """Fetch ``cids`` from ``peer``; returns ``{digest: bytes}`` for those that came.

        Arriving blocks are hash-checked by bitswap and by :class:`StoreAdapter` and
        are already in the store when this returns.
        """
        session = self.client.new_session()
        try:
            got = await session.get_blocks_batch(
                [c.to_bytes() for c in cids], peer_id=ID.from_base58(peer), timeout=timeout, batch_size=len(cids)
            )
        except StorageError as exc:
            event(log, "bitswap_bad_block", peer=peer, detail=str(exc)[:200])
            raise
        out: dict[bytes, bytes] = {}
        for raw, data in got.items():
            try:
                cid = cid_from_bytes(raw)
            except ProtocolError:
                continue
            if cid.verify(data):
                out[cid.digest] = data
        return out
