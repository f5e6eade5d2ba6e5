"""Issue 22 item 4: disk fill through the ``merge`` strategy.

One unauthenticated ``/mosaic/query/1`` request naming two attacker CIDs
(repeated-leaf DAGs declaring 3 GiB and 2 GiB) made an expert node fetch
2.2 MB, write 5.1 GB in 13 s, answer 400 and keep the files.  Now an input
must declare at most what a LoRA adapter of the node's base can weigh
(merge.adapter_size_limit: rank <= 64 on every layer of the real SmolLM2),
checked when its DAG's root arrives; what is fetched is charged to the asking
peer's quota; and refused inputs leave nothing behind (docs/security.md,
"What an anonymous peer may make a node do").

Real nodes on loopback: the victim serves the real SmolLM2-135M expert, the
attacker is a node whose storage provides the DAGs through the DHT.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

import protocol as p
from node.coordinator.calls import QueryFailed
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.model.merge import expert_adapter_size_limit
from node.expert.serve.service import ExpertService
from node.net.discovery import dial
from node.storage import BlockStore, StorageService
from protocol.cid import RAW, cid_for_block
from tests.cluster.harness import in_process_cluster
from tests.cluster.test_query import client_host

from .test_fetch_bomb import _node, bomb

pytestmark = pytest.mark.timeout(240)

MIB = 1024 * 1024


def spread(distinct: int, repeats: int, leaf_size: int = MIB) -> list:
    """A file of ``distinct`` different leaves, each repeated ``repeats`` times: it expands its blocks
    ``repeats`` times, under the storage's expansion limit when ``repeats`` < 16."""
    blocks = []
    mids = []
    for i in range(distinct):
        leaf = bytes([i % 251 + 1]) * leaf_size
        leaf_cid = cid_for_block(leaf, codec=RAW)
        mid_cid, mid = _node([(leaf_cid, leaf_size)] * repeats, filesize=repeats * leaf_size)
        blocks += [(leaf_cid, leaf), (mid_cid, mid)]
        mids.append((mid_cid, len(mid) + repeats * leaf_size))
    root_cid, root = _node(mids, filesize=distinct * repeats * leaf_size)
    return [(root_cid, root), *blocks]


def _stored(*paths: Path) -> int:
    return sum(f.stat().st_size for path in paths if path.exists() for f in path.rglob("*") if f.is_file())


async def _merge(host, peer: str, cids: list[str]) -> tuple[QueryFailed | p.QueryResult, float]:
    request = p.QueryRequest(request_id=f"bomb-{time.monotonic_ns()}", strategy="merge", prompt="hi",
                             params={"adapters": ",".join(cids), "weights": "0.5,0.5"}, timeout_s=90.0)
    began = time.monotonic()
    try:
        async with aclosing(ask(host, peer, request)) as events:
            async for event in events:
                last = event
    except QueryFailed as exc:
        return exc, time.monotonic() - began
    return last, time.monotonic() - began


async def test_a_merge_query_cannot_make_an_expert_fetch_or_keep_a_bomb(base_expert) -> None:
    limit = expert_adapter_size_limit(base_expert)
    assert 16 * MIB < limit < 256 * MIB  # SmolLM2-135M: rank 64 on every layer, fp32
    bombs = [bomb(56, MIB), bomb(46, MIB)]  # the issue's: ~1 MiB each, declaring 3.06 and 2.07 GiB
    moderate = [spread(20, 15), spread(21, 15)]  # 300 and 315 MiB from 20 and 21 MiB: only the adapter bound
    with trio.fail_after(230):
        async with in_process_cluster() as cluster:
            evil = StorageService(BlockStore(cluster.root / "evil-store"))
            attacker = await cluster.add(0, services=[evil])
            victim_store = BlockStore(cluster.root / "victim-store")
            victim = await cluster.add(1, services=[StorageService(victim_store),
                                                    ExpertService(expert=base_expert, threads=1), QueryService()])
            for dag in bombs + moderate:
                for cid, data in dag:
                    evil.store.put(cid, data)
                evil.store.pin(dag[0][0])
                await evil.announce(dag[0][0])  # providers in the DHT: how the victim finds them
            before = _stored(victim.config.data_path, cluster.root / "victim-store")
            async with client_host() as host:
                peer = await dial(host, victim.full_multiaddrs()[0])
                outcomes = [await _merge(host, peer, [str(d[0][0]) for d in pair]) for pair in (bombs, moderate)]
            grew = _stored(victim.config.data_path, cluster.root / "victim-store") - before
            for (outcome, seconds), pair in zip(outcomes, (bombs, moderate), strict=True):
                assert isinstance(outcome, QueryFailed), outcome
                assert outcome.code == "too_large", outcome.message
                assert "an adapter of this base can weigh" in outcome.message, outcome.message
                assert seconds < 60, seconds
                for dag in pair:
                    assert not victim_store.has(dag[0][0])  # nothing kept
                    assert not (victim.config.data_path / "content" / str(dag[0][0])).exists()
            assert grew < 4 * MIB, grew  # before: 5.1 GB (and 0.6 GB for the moderate pair)
    print(f"merge bombs refused: {outcomes[0][1]:.1f}s and {outcomes[1][1]:.1f}s, victim disk grew {grew:,} bytes "
          f"(adapter bound {limit:,} bytes)")
