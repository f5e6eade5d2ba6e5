"""Issue 22 item 9: fetch quotas, per fetch and per requester.

A real 3 GiB file built from one repeated 1 MiB leaf downloaded 1 MiB and
wrote 3.1 GB in 8 s: the only limit was the free disk less 1 GiB.  Now
(node/storage/quota.py, exporter.check_expansion):

* content over 256 MiB that declares more than 16x the bytes of its distinct
  blocks is refused before the export writes a byte;
* each fetch runs under a per-fetch quota its root's declared size must fit
  before any child is asked for;
* content fetched because a remote peer asked is charged to that peer (and to
  all remote peers together) over a sliding hour;
* refusals name the quota and the setting that raises it, and leave no blocks.

Real nodes on loopback (StorageService over /mosaic/blocks/1).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from node.storage import BlockStore, StorageService
from node.storage.fetch import DagTooLarge
from node.storage.quota import MIB, FetchQuota
from node.storage.service import ensure_local
from tests.cluster.harness import in_process_cluster

from .test_fetch_bomb import bomb

pytestmark = pytest.mark.timeout(120)

GIB = 1024**3


def _written(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


async def _pair(cluster, victim_quota: FetchQuota | None = None):
    evil = StorageService(BlockStore(cluster.root / "evil-store"))
    victim = StorageService(BlockStore(cluster.root / "victim-store"), quota=victim_quota)
    provider = await cluster.add(0, services=[evil])
    node = await cluster.add(1, services=[victim])
    return provider, evil, node, victim


async def test_a_repeated_leaf_file_is_refused_before_the_export_writes(tmp_path: Path) -> None:
    blocks = bomb(56, 1024 * 1024)  # 3 blocks, ~1 MiB; a 3.06 GiB file
    with trio.fail_after(100):
        async with in_process_cluster() as cluster:
            provider, evil, node, victim = await _pair(cluster)
            for cid, data in blocks:
                evil.store.put(cid, data)
            began = time.monotonic()
            stats = await victim.fetch(blocks[0][0], peers=[provider.peer_id])  # 1 MiB: under every quota
            assert stats.bytes_fetched < 2 * MIB
            out = tmp_path / "out"
            out.mkdir()
            with pytest.raises(DagTooLarge, match="expansion limit.*storage.max_expansion"):
                await victim.export(blocks[0][0], out / "file")
            seconds = time.monotonic() - began
    assert _written(out) == 0  # before: 3.1 GB in seconds
    print(f"repeated-leaf file: fetched {stats.bytes_fetched:,} bytes, wrote 0, refused in {seconds:.1f}s")


async def test_the_per_fetch_quota_refuses_at_the_root_and_keeps_nothing(tmp_path: Path) -> None:
    blocks = bomb(56, 1024 * 1024)
    with trio.fail_after(100):
        async with in_process_cluster() as cluster:
            provider, evil, node, victim = await _pair(cluster, FetchQuota(max_fetch_bytes=GIB))
            for cid, data in blocks:
                evil.store.put(cid, data)
            with pytest.raises(DagTooLarge, match=r"over the per-fetch quota of 1,073,741,824 bytes "
                                                  r"\(storage.max_fetch_mib; node fetch --max-size\)"):
                await victim.fetch(blocks[0][0], peers=[provider.peer_id])
            assert victim.store.get(blocks[2][0]) is None  # the leaf was never asked for
            assert not victim.store.has(blocks[0][0])  # nor is the refused root kept


async def test_content_fetched_for_remote_peers_is_charged_to_each_and_to_all(tmp_path: Path) -> None:
    quota = FetchQuota(per_requester_bytes=6 * MIB, for_others_bytes=10 * MIB)
    with trio.fail_after(100):
        async with in_process_cluster() as cluster:
            provider, evil, node, victim = await _pair(cluster, quota)
            cids = []
            for i in range(3):
                path = tmp_path / f"content-{i}.bin"
                path.write_bytes(os.urandom(4 * MIB))
                cids.append(str((await evil.publish(path, announce=False)).cid))
            fetch = dict(peers=[provider.peer_id])
            await ensure_local(node, cids[0], **fetch, requester="peer-x")
            with pytest.raises(DagTooLarge, match=r"per-requester quota of 6,291,456 bytes per 3600 s for "
                                                  r"peer-x .*storage.peer_quota_mib"):
                await ensure_local(node, cids[1], **fetch, requester="peer-x")
            await ensure_local(node, cids[1], **fetch, requester="peer-y")  # another peer: its own quota
            with pytest.raises(DagTooLarge, match=r"fetched for other peers .*storage.others_quota_mib"):
                await ensure_local(node, cids[2], **fetch, requester="peer-z")  # all peers together: 8 of 10 MiB
            from protocol.cid import parse_cid

            assert not victim.store.has(parse_cid(cids[2]))  # refused: no blocks kept
            await ensure_local(node, cids[2], **fetch)  # the node's own user: the per-fetch quota only
