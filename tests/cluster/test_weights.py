"""Model weights over the network: publish, DHT providers, multi-provider fetch, faults.

Real nodes (libp2p hosts, KadDHT, our block protocol and bitswap) on 127.0.0.1 in
one trio process; every block is verified against its CID on arrival.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from node.storage import BlockStore, FetchError, StorageService, ensure_local, fetch_dag
from node.storage.exporter import export
from protocol.cid import parse_cid
from protocol.unixfs import CHUNK_SIZE
from tests.cluster.harness import in_process_cluster

pytestmark = pytest.mark.timeout(90)


def _adapter_dir(root: Path, leaves: int = 24) -> Path:
    """A LoRA-adapter-shaped directory (weights + config) of ``leaves`` 256 KiB chunks."""
    src = root / "adapter-src"
    src.mkdir(parents=True)
    rng = random.Random(42)
    (src / "adapter_model.safetensors").write_bytes(rng.randbytes(leaves * CHUNK_SIZE - 1000))
    (src / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}\n')
    return src


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith("."))
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


async def _cluster_with_storage(cluster, count: int) -> list[StorageService]:
    services = []
    for index in range(count):
        service = StorageService(BlockStore(cluster.root / f"store-{index}"))
        await cluster.add(index, services=[service])
        services.append(service)
    return services


async def test_adapter_published_by_a_reaches_c_from_a_and_b(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with in_process_cluster() as cluster:
            a, b, c = await _cluster_with_storage(cluster, 3)
            src = _adapter_dir(tmp_path)
            published = await a.publish(src)

            # B knows nothing but the CID: it finds A through the DHT provider records.
            b_dir = await ensure_local(cluster.nodes[1], str(published.cid), tmp_path / "on-b")
            assert _same_tree(src, b_dir)

            # C fetches from both; a small window makes both providers take a share.
            stats = await c.fetch(published.cid, peers=[cluster.nodes[0].peer_id, cluster.nodes[1].peer_id], window=2)
            assert set(stats.bytes_by_peer) == {cluster.nodes[0].peer_id, cluster.nodes[1].peer_id}
            assert all(n > 0 for n in stats.bytes_by_peer.values())
            assert stats.bytes_fetched == published.dag_size  # no duplicate transfers
            out = await c.export(published.cid, tmp_path / "on-c")
            assert _same_tree(src, out)
            assert c.store.is_pinned(published.cid)


async def test_provider_killed_mid_fetch_completes_from_the_other(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with in_process_cluster() as cluster:
            a, b, c = await _cluster_with_storage(cluster, 3)
            src = _adapter_dir(tmp_path, leaves=48)
            published = await a.publish(src)
            await b.fetch(published.cid, peers=[cluster.nodes[0].peer_id])
            killed = False

            def kill_b_halfway(done: int, total: int | None) -> None:
                nonlocal killed
                if not killed and total and done > total // 3:
                    killed = True
                    cluster.stop(cluster.nodes[1])

            stats = await c.fetch(
                published.cid, peers=[cluster.nodes[1].peer_id, cluster.nodes[0].peer_id], progress=kill_b_halfway, window=2
            )
            assert killed
            assert cluster.nodes[1].peer_id in stats.dropped_peers
            assert stats.bytes_by_peer[cluster.nodes[0].peer_id] > 0
            assert _same_tree(src, await c.export(published.cid, tmp_path / "on-c"))


def _corrupt_leaves(store: BlockStore, root_text: str) -> list:
    root = parse_cid(root_text)
    corrupted = []
    for cid in store.walk(root):
        data = store.get(cid)
        if cid.codec == 0x55 and len(data) == CHUNK_SIZE:
            path = store._path(cid)
            path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
            corrupted.append(cid)
    return corrupted


async def test_corrupted_blocks_are_rejected_and_the_sender_dropped(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with in_process_cluster() as cluster:
            a, b, c = await _cluster_with_storage(cluster, 3)
            src = _adapter_dir(tmp_path)
            published = await a.publish(src)
            await b.fetch(published.cid, peers=[cluster.nodes[0].peer_id])
            bad = _corrupt_leaves(b.store, str(published.cid))
            assert bad

            # Only the corrupt provider: the fetch fails and no bad block is stored.
            with pytest.raises(FetchError, match="bad block"):
                await fetch_dag(cluster.nodes[2].host, c.store, published.cid, [cluster.nodes[1].peer_id])
            assert not any(c.store.has(cid) for cid in bad)

            # Corrupt + honest provider: completes from the honest one, the liar is dropped.
            stats = await fetch_dag(
                cluster.nodes[2].host, c.store, published.cid,
                [cluster.nodes[1].peer_id, cluster.nodes[0].peer_id], window=2,
            )
            assert stats.rejected_blocks[cluster.nodes[1].peer_id] == 1
            assert cluster.nodes[1].peer_id in stats.dropped_peers
            export(c.store, published.cid, tmp_path / "on-c")
            assert _same_tree(src, tmp_path / "on-c")


async def test_interrupted_fetch_resumes_without_refetching(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with in_process_cluster() as cluster:
            a, c = await _cluster_with_storage(cluster, 2)
            published = await a.publish(_adapter_dir(tmp_path))
            peers = [cluster.nodes[0].peer_id]
            with trio.move_on_after(30) as scope:

                def stop_early(done: int, total: int | None) -> None:
                    if total and done > total // 2:
                        scope.cancel()

                await c.fetch(published.cid, peers=peers, progress=stop_early, window=2)
            assert scope.cancelled_caught
            have_before = sum(1 for d in c.store.digests())
            assert 0 < have_before
            stats = await c.fetch(published.cid, peers=peers)
            assert stats.blocks_already_local == have_before
            assert stats.blocks_fetched + stats.blocks_already_local == len(list(a.store.walk(published.cid)))
