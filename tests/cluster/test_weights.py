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
            assert stats.rejected_blocks[cluster.nodes[1].peer_id] >= 1, stats
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


class _ExpertWithAdapterByCid:
    """What a node does for ``--adapter NAME=CID``: ensure_local(), then serve the expert.

    (The expert service takes adapter *paths*; this wrapper is the glue the node's
    start-up applies when a spec is a CID.)
    """

    def __init__(self, name: str, cid: str, expert_data_dir: Path) -> None:
        self.name, self.cid, self.expert_data_dir = name, cid, expert_data_dir
        self.expert_service = None
        self.adapter_path: Path | None = None
        self.serving = trio.Event()

    def record_fields(self) -> dict[str, object]:
        return self.expert_service.record_fields() if self.expert_service else {}

    async def run(self, node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from node.config import ExpertConfig
        from node.expert import ExpertService
        from tests.expert.fixtures import default_engine

        # Node.run starts services *before* it bootstraps: fetching inside start-up would
        # find no providers, so report started first and fetch + load in the background.
        task_status.started()
        self.adapter_path = await ensure_local(node, self.cid)
        node.config.cache_dir = str(self.expert_data_dir)  # reuse the session's converted base model
        self.expert_service = ExpertService(ExpertConfig(adapters={self.name: str(self.adapter_path)}, device="cpu",
                                                           engine=default_engine()), threads=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.expert_service.run, node)
            await node.announce_now()  # the record now lists the adapter
            self.serving.set()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_c_serves_generations_with_an_adapter_fetched_by_cid(
    tmp_path: Path, lora_adapter_dir: Path, adapter_expert, expert_data_dir: Path
) -> None:
    from contextlib import aclosing

    from protocol import ChatMessage, GenerateRequest, GenerateResult, SamplingParams
    from tests.expert.fixtures import ADAPTER_NAME, hf_greedy

    with trio.fail_after(240):
        async with in_process_cluster() as cluster:
            a, b = await _cluster_with_storage(cluster, 2)
            published = await a.publish(lora_adapter_dir)
            await b.fetch(published.cid, peers=[cluster.nodes[0].peer_id])
            storage_c = StorageService(BlockStore(cluster.root / "store-2"))
            expert_c = _ExpertWithAdapterByCid(ADAPTER_NAME, str(published.cid), expert_data_dir)
            node_c = await cluster.add(2, services=[storage_c, expert_c])
            await expert_c.serving.wait()

            assert _same_tree(lora_adapter_dir, expert_c.adapter_path)
            record = node_c.own_record()
            assert [info.name for info in record.adapters] == [ADAPTER_NAME]
            request = GenerateRequest(
                request_id="lora-by-cid",
                messages=(ChatMessage(role="user", content="What is the capital of France?"),),
                adapter=ADAPTER_NAME,
                sampling=SamplingParams(max_new_tokens=12),
            )
            result = None
            async with aclosing(expert_c.expert_service.local.generate(request)) as events:
                async for message in events:
                    if isinstance(message, GenerateResult):
                        result = message
            assert result is not None and result.adapter == ADAPTER_NAME
            assert result.text == hf_greedy(adapter_expert, "What is the capital of France?", adapter=ADAPTER_NAME)
