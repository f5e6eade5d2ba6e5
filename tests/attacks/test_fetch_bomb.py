"""Attack 4 (issue 12): fetch bombs and path tricks in DAGs.

A DAG may link one block many times: 3 blocks (~1.1 MB) that expand to a
declared 1.85 TiB made ``fetch`` write 2.4 GiB in 3 s before it was stopped.
Now the root's declared size must fit a cap and the free disk before any child
is fetched, every block must weigh what its parent declared, an export stops
the moment a file outgrows its declared size, and directory entries with
backslashes or NULs are refused.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from node.net.host import build_host
from node.net.keys import libp2p_key_pair
from node.storage.blocks_protocol import BlockServer
from node.storage.blockstore import BlockStore, StorageError
from node.storage.exporter import export
from node.storage.fetch import DagSizeMismatch, DagTooLarge, fetch_dag
from protocol import Identity
from protocol.cid import CID, DAG_PB, RAW, cid_for_block
from protocol.dagpb import (
    DIRECTORY,
    FILE,
    PBLink,
    PBNode,
    UnixFSData,
    encode_node,
    encode_unixfs,
)
from protocol.errors import DecodeError
from protocol.unixfs import read_block

pytestmark = pytest.mark.timeout(60)
LISTEN = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
TIB = 1024**4


def _node(links: list[tuple[CID, int]], *, kind: int = FILE, filesize: int | None = None, names: list[str] | None = None) -> tuple[CID, bytes]:
    unixfs = UnixFSData(kind, None, filesize, tuple(size for _, size in links) if kind == FILE else ())
    pb_links = tuple(PBLink(cid.to_bytes(), (names or [""] * len(links))[i], tsize) for i, (cid, tsize) in enumerate(links))
    data = encode_node(PBNode(pb_links, encode_unixfs(unixfs)))
    return cid_for_block(data, codec=DAG_PB), data


def bomb(fanout: int, leaf_size: int, *, lie_about_mid: bool = False, declared: int | None = None) -> list[tuple[CID, bytes]]:
    """root -> fanout x mid -> fanout x the same raw leaf: 3 blocks, fanout**2 leaves when exported."""
    leaf = b"\x00" * leaf_size
    leaf_cid = cid_for_block(leaf, codec=RAW)
    mid_cid, mid = _node([(leaf_cid, leaf_size)] * fanout, filesize=fanout * leaf_size)
    mid_weight = len(mid) + fanout * leaf_size
    root_cid, root = _node([(mid_cid, 64 if lie_about_mid else mid_weight)] * fanout,
                           filesize=declared if declared is not None else fanout * fanout * leaf_size)
    return [(root_cid, root), (mid_cid, mid), (leaf_cid, leaf)]


@asynccontextmanager
async def _provider(tmp_path: Path, blocks: list[tuple[CID, bytes]]):
    """A peer serving ``blocks`` over /mosaic/blocks/1, and a fresh host to fetch with."""
    server_id, client_id = Identity.generate(), Identity.generate()
    server_host = build_host(libp2p_key_pair(server_id), ["/ip4/127.0.0.1/tcp/0"])
    client_host = build_host(libp2p_key_pair(client_id), ["/ip4/127.0.0.1/tcp/0"])
    store = BlockStore(tmp_path / "evil-store")
    for cid, data in blocks:
        store.put(cid, data)
    async with server_host.run(listen_addrs=LISTEN), client_host.run(listen_addrs=LISTEN):
        BlockServer(store).register(server_host)
        await client_host.connect(info_from_p2p_addr(Multiaddr(f"{server_host.get_addrs()[0]}/p2p/{server_id.peer_id}")))
        yield client_host, server_id.peer_id


def _stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def test_bomb_declaring_a_tebibyte_is_refused_after_the_root(tmp_path: Path) -> None:
    blocks = bomb(1024, 1024 * 1024)  # 3 blocks, ~1.1 MB; declares 1 TiB
    store = BlockStore(tmp_path / "victim")
    async with _provider(tmp_path, blocks) as (host, provider):
        with trio.fail_after(20), pytest.raises(DagTooLarge, match="declares"):
            await fetch_dag(host, store, blocks[0][0], [provider])
    assert store.get(blocks[2][0]) is None  # the leaf was never asked for
    assert _stored_bytes(tmp_path / "victim") < 200_000


async def test_block_heavier_than_its_parent_declared_stops_the_fetch(tmp_path: Path) -> None:
    blocks = bomb(64, 256 * 1024, lie_about_mid=True)  # root says each mid weighs 64 bytes
    store = BlockStore(tmp_path / "victim")
    async with _provider(tmp_path, blocks) as (host, provider):
        with trio.fail_after(20), pytest.raises(DagSizeMismatch, match="parent declared 64"):
            await fetch_dag(host, store, blocks[0][0], [provider])
    assert store.get(blocks[2][0]) is None


def test_export_stops_when_a_file_outgrows_its_declared_size(tmp_path: Path) -> None:
    # Blocks already local (e.g. fetched with an older node): 32 x 32 x 256 KiB = 256 MiB
    # of content behind a root that declares 2 MiB.
    store = BlockStore(tmp_path / "store")
    blocks = bomb(32, 256 * 1024, declared=2 * 1024 * 1024)
    for cid, data in blocks:
        store.put(cid, data)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StorageError, match="more than the 2,097,152 bytes"):
        export(store, blocks[0][0], out / "file")
    assert not (out / "file").exists()
    assert _stored_bytes(out) == 0  # the partial file is removed


def test_export_refuses_a_declared_size_over_the_free_disk(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "store")
    blocks = bomb(4, 1024, declared=int(1.85 * TIB))
    for cid, data in blocks:
        store.put(cid, data)
    with pytest.raises(DagTooLarge, match="declares"):
        export(store, blocks[0][0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["..\\..\\evil", "a\\b", "nul\x00byte", "..", "a/b"])
def test_directory_entries_with_path_tricks_are_refused(tmp_path: Path, name: str) -> None:
    leaf = b"pwned"
    leaf_cid = cid_for_block(leaf, codec=RAW)
    root_cid, root = _node([(leaf_cid, len(leaf))], kind=DIRECTORY, names=[name])
    with pytest.raises(DecodeError, match="invalid directory entry name"):
        read_block(root_cid, root)
    store = BlockStore(tmp_path / "store")
    store.put(leaf_cid, leaf)
    store.put(root_cid, root)
    with pytest.raises(StorageError):
        export(store, root_cid, tmp_path / "out")
    assert not list(tmp_path.rglob("*pwned*")) and not (tmp_path / "evil").exists()
