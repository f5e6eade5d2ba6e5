"""Weights over a relay (issue 20): the block server refuses past its cap, with the reason; direct is uncapped."""

from __future__ import annotations

import pytest
import trio
from multiaddr import Multiaddr

from node.storage.blocks_protocol import BlockServer, BlockStream, TransferRefused, encode_request
from node.storage.blockstore import BlockStore
from protocol.cid import RAW, cid_for_block

RELAY = "12D3KooWD3gmvc5QrJGox9yjDY1ETi4NER559oDJ4zFXqXpojCJX"
PEER = "12D3KooWM8kLqF5qvL9A7ukk9B9bnmaoMyQAUcVQATqULvur3CKe"


class _Conn:
    def __init__(self, relayed: bool) -> None:
        self.peer_id = PEER
        self.addrs = [Multiaddr(f"/p2p/{RELAY}/p2p-circuit/p2p/{PEER}")] if relayed else [Multiaddr("/ip4/10.0.0.1/tcp/1")]

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self.addrs


class _Pipe:
    """One direction-pair of an in-memory stream: what the server writes, the client reads."""

    def __init__(self, relayed: bool, request: bytes) -> None:
        self.muxed_conn = _Conn(relayed)
        self._in = bytearray(request)
        self.out = bytearray()

    async def read(self, n: int = -1) -> bytes:
        chunk, self._in = bytes(self._in[:n]), self._in[n:]
        return chunk

    async def write(self, data: bytes) -> None:
        self.out += data

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


def _served(tmp_path, relayed: bool, cap: int) -> list[bytes | None | str]:
    store = BlockStore(tmp_path / "blocks")
    blocks = [bytes([i]) * 200_000 for i in range(4)]
    cids = [cid_for_block(b, codec=RAW) for b in blocks]
    for cid, block in zip(cids, blocks, strict=True):
        store.put(cid, block)
    server = BlockServer(store, relay_cap_bytes=cap)
    pipe = _Pipe(relayed, encode_request(cids))

    async def main() -> list[bytes | None | str]:
        await server._serve(pipe, PEER)  # type: ignore[arg-type]
        client = BlockStream(_Pipe(relayed, bytes(pipe.out)), PEER)  # type: ignore[arg-type]
        got: list[bytes | None | str] = []
        for _ in cids:
            try:
                got.append(await client.receive())
            except TransferRefused as exc:
                got.append(str(exc))
                break
        return got

    return trio.run(main)


def test_relay_transfer_cap_refuses_weights_over_a_relay_with_a_message(tmp_path) -> None:
    got = _served(tmp_path, relayed=True, cap=450_000)
    assert [len(g) for g in got[:2] if isinstance(g, bytes)] == [200_000, 200_000]
    assert isinstance(got[2], str) and "over a relayed connection refused" in got[2] and "directly" in got[2]


def test_relay_transfer_cap_does_not_touch_direct_connections(tmp_path) -> None:
    got = _served(tmp_path, relayed=False, cap=450_000)
    assert len(got) == 4 and all(isinstance(g, bytes) and len(g) == 200_000 for g in got)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
