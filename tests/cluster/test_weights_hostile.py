"""Hostile peers against /mosaic/blocks/1: garbage, oversized frames, silence, stream floods.

The server must drop the offending stream quickly, never buffer what a peer merely
announces, and keep serving honest requests afterwards.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from node.net.host import build_host
from node.net.keys import libp2p_key_pair
from node.net.streams import StreamClosed
from node.storage.blocks_protocol import BLOCKS_PROTOCOL, BlockServer, BlockStream, encode_request
from node.storage.blockstore import BlockStore
from node.storage.importer import import_path
from protocol import Identity
from protocol.cid import RAW, cid_for_block
from protocol.framing import encode_varint

pytestmark = pytest.mark.timeout(60)
LISTEN = [Multiaddr("/ip4/127.0.0.1/tcp/0")]


@asynccontextmanager
async def _pair(tmp_path: Path, **server_opts):
    server_id, client_id = Identity.generate(), Identity.generate()
    server_host = build_host(libp2p_key_pair(server_id), ["/ip4/127.0.0.1/tcp/0"])
    client_host = build_host(libp2p_key_pair(client_id), ["/ip4/127.0.0.1/tcp/0"])
    store = BlockStore(tmp_path / "store")
    (tmp_path / "w.bin").write_bytes(b"w" * 600_000)
    root = import_path(store, tmp_path / "w.bin").cid
    server = BlockServer(store, **server_opts)
    async with server_host.run(listen_addrs=LISTEN), client_host.run(listen_addrs=LISTEN):
        server.register(server_host)
        await client_host.connect(info_from_p2p_addr(Multiaddr(f"{server_host.get_addrs()[0]}/p2p/{server_id.peer_id}")))
        yield client_host, server_id.peer_id, server, root


async def _raw_stream(host, peer: str):
    from libp2p.peer.id import ID

    return await host.new_stream(ID.from_base58(peer), [TProtocol(BLOCKS_PROTOCOL)])


async def _read_all(stream) -> bytes:
    out = b""
    while True:
        try:
            chunk = await stream.read(65536)
        except Exception:
            return out
        if not chunk:
            return out
        out += chunk


async def _still_serves(host, peer: str, root) -> None:
    honest = await BlockStream.open(host, peer)
    await honest.request([root])
    assert root.verify(await honest.receive())
    await honest.aclose()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x05hello",  # a frame whose body is not a CID list
        encode_varint(2**40),  # announces a 1 TiB frame: refused before buffering
        encode_varint(5000) + b"x" * 5000,  # over the 4 KiB request cap
        encode_request([cid_for_block(bytes([i]), codec=RAW) for i in range(64)])[:-1],  # truncated
    ],
)
async def test_bad_requests_reset_the_stream_and_the_server_keeps_serving(tmp_path: Path, payload: bytes) -> None:
    with trio.fail_after(20):
        async with _pair(tmp_path) as (host, peer, server, root):
            raw = await _raw_stream(host, peer)
            await raw.write(payload)
            await raw.close()
            assert await _read_all(raw) == b""
            await _still_serves(host, peer, root)


async def test_too_many_cids_in_one_request_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with _pair(tmp_path) as (host, peer, server, root):
            body = b"".join(encode_varint(36) + cid_for_block(bytes([i]), codec=RAW).to_bytes() for i in range(65))
            raw = await _raw_stream(host, peer)
            await raw.write(encode_varint(len(body)) + body)
            assert await _read_all(raw) == b""
            assert server.stats.bad_requests == 1


async def test_silent_stream_is_dropped_after_the_idle_deadline(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with _pair(tmp_path, idle_timeout=0.5) as (host, peer, server, root):
            raw = await _raw_stream(host, peer)
            started = trio.current_time()
            assert await _read_all(raw) == b""
            assert trio.current_time() - started < 5


async def test_per_peer_stream_limit(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with _pair(tmp_path, max_per_peer=2) as (host, peer, server, root):
            held = [await BlockStream.open(host, peer) for _ in range(2)]
            for stream in held:  # make sure the server has accepted both
                await stream.request([root])
                assert await stream.receive() is not None
            with pytest.raises(StreamClosed):  # refused: reset during negotiation or before answering
                extra = await BlockStream.open(host, peer)
                await extra.request([root])
                await extra.receive()
            assert server.stats.refused_streams == 1
            for stream in held:
                await stream.aclose()


async def test_missing_block_is_answered_not_fatal(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with _pair(tmp_path) as (host, peer, server, root):
            stream = await BlockStream.open(host, peer)
            await stream.request([cid_for_block(b"nobody has this", codec=RAW), root])
            assert await stream.receive() is None
            assert root.verify(await stream.receive())
