"""The `merge` strategy on real loopback nodes: a peer serves two trained adapters; the coordinator,
which serves the same base, fetches them by CID, merges them, loads the merge into its own expert
and answers with it; the same query again reuses the cached merge (same CID, no re-merge).  Both
nodes load the model as a started node does, on each engine (llama.cpp loads the merge as a GGUF LoRA)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import aclosing

import pytest
import trio

import protocol as p
from node.config import ExpertConfig
from node.coordinator.service import QueryService
from node.expert import ExpertService
from node.expert.remote import client
from node.net.discovery import dial
from node.storage import BlockStore, StorageService
from tests.cluster.harness import REPO_ROOT, in_process_cluster
from tests.cluster.test_collaboration import answer
from tests.cluster.test_query import client_host
from tests.training.fixtures import QUESTION

pytestmark = pytest.mark.timeout(600)  # model loads on a shared 2-core box


async def score(host, peer_id: str, adapter: str | None, continuation: str, local=None) -> float:
    """Mean log-probability of ``continuation`` as the reply to QUESTION, with ``adapter``."""
    request = p.ScoreRequest(request_id=f"score-{adapter}", adapter=adapter, continuation=continuation,
                             messages=(p.ChatMessage(role="user", content=QUESTION),))
    result = await client.score(host, peer_id, request, timeout=60, local=local)
    return sum(result.logprobs) / len(result.logprobs)


async def reply(host, peer_id: str, adapter: str | None) -> str:
    request = p.GenerateRequest(request_id=f"ask-{adapter}", adapter=adapter, stream=False,
                                messages=(p.ChatMessage(role="user", content=QUESTION),),
                                sampling=p.SamplingParams(max_new_tokens=6))
    async with aclosing(client.generate(host, peer_id, request)) as events:
        async for message in events:
            if isinstance(message, p.GenerateResult):
                return message.text
    raise AssertionError("no result")


@pytest.mark.parametrize("engine", ["llama.cpp", "torch"])
async def test_merge_strategy_fetches_by_cid_merges_once_and_answers_with_the_merge(trained_adapters,
                                                                                   expert_data_dir, engine):
    adapters = {name: str(path) for name, path in trained_adapters.items()}
    with trio.fail_after(300):
        async with in_process_cluster() as cluster:
            holder = ExpertService(ExpertConfig(adapters=adapters, engine=engine), threads=1, model_cache_dir=str(expert_data_dir))
            node0 = await cluster.add(0, services=[StorageService(BlockStore(cluster.root / "store-0")), holder],
                                      record_ttl=30.0)
            own = ExpertService(ExpertConfig(engine=engine), threads=1, model_cache_dir=str(expert_data_dir))
            node1 = await cluster.add(1, services=[StorageService(BlockStore(cluster.root / "store-1")), own,
                                                   QueryService()], record_ttl=30.0)
            await node1.registry.wait_for(
                lambda r: (rec := r.get(node0.peer_id)) is not None and len(rec.adapters) == 2, timeout=60)
            cids = {a.name: a.cid for a in node1.registry.get(node0.peer_id).adapters}
            params = {"adapters": f"{cids['pineapple']},{cids['mango']}", "weights": "0.5,0.5", "method": "ties"}
            async with client_host() as host:
                peer = await dial(host, node1.full_multiaddrs()[0])
                began = time.monotonic()
                text, first = await answer(host, peer, QUESTION, strategy="merge", params=params)
                first_s = time.monotonic() - began
                began = time.monotonic()
                text2, second = await answer(host, peer, QUESTION, strategy="merge", params=params)
                second_s = time.monotonic() - began
                merged = json.loads(next(s for s in first.trace.steps if s.call == "merge").output)
                name = first.trace.steps[-1].adapter
                inputs = {a: await reply(node1.host, node0.peer_id, a) for a in ("pineapple", "mango")}
                # The merged expert's own belief in each answer, against each input adapter's.
                beliefs = {a: await score(node1.host, node0.peer_id, a, "Pineapple") for a in ("pineapple", "mango")}
                beliefs["merged"] = await score(node1.host, node1.peer_id, name, "Pineapple", own.local)
            announced = node1.own_record()
            assert node0.own_record().engine == announced.engine == engine
    print(f"merge strategy: first query {first_s:.1f}s (fetch + merge + load), cached {second_s:.1f}s; "
          f"inputs {inputs}, merged {text!r}; log p(Pineapple) {beliefs}")
    step = next(s for s in first.trace.steps if s.call == "merge")
    assert step.status == "ok" and step.peer == node1.peer_id and merged["cache"] == "miss"
    assert merged["cids"] == [cids["pineapple"], cids["mango"]] and merged["weights"] == [0.5, 0.5]
    assert merged["merged_cid"].startswith("bafy") and merged["merged_cid"] not in cids.values()
    # Served by the coordinator's expert, with the merged adapter; the same CID the second time, from the cache.
    assert first.trace.steps[-1].peer == node1.peer_id and first.trace.steps[-1].adapter_cid == merged["merged_cid"]
    again = json.loads(next(s for s in second.trace.steps if s.call == "merge").output)
    assert again["merged_cid"] == merged["merged_cid"] and again["cache"] == "hit" and not again["loaded"]
    assert text2 == text and second_s < first_s
    # The merge is served and announced: fetchable by its CID.
    assert (name, merged["merged_cid"]) in [(a.name, a.cid) for a in announced.adapters]
    # It is neither input: its answer or its distribution differs from each.
    assert "Pineapple" in inputs["pineapple"] and "Mango" in inputs["mango"]
    for adapter in ("pineapple", "mango"):
        assert text.strip() != inputs[adapter].strip() or abs(beliefs["merged"] - beliefs[adapter]) > 0.1, adapter


def _merge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", "merge", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


async def test_merge_command_fetches_cids_from_a_peer(trained_adapters, tmp_path):
    """`node merge CID CID --peer ADDR`: the inputs come through the block store (the same fetch as the strategy)."""
    with trio.fail_after(300):
        async with in_process_cluster() as cluster:
            storage = StorageService(BlockStore(cluster.root / "store-0"))
            node0 = await cluster.add(0, services=[storage])
            cids = [str((await storage.publish(trained_adapters[name])).cid) for name in ("pineapple", "mango")]
            addr = node0.full_multiaddrs()[0]
            done = await trio.to_thread.run_sync(lambda: _merge_cli(
                *cids, "--peer", addr, "--weights", "0.5,0.5", "--method", "linear", "--publish",
                "--data-dir", str(tmp_path / "merger"), "--timeout", "120"))
            missing = await trio.to_thread.run_sync(lambda: _merge_cli(
                cids[0], "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "--peer", addr,
                "--data-dir", str(tmp_path / "other"), "--timeout", "20"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "merged 2 adapters (linear, weights [0.5, 0.5]" in done.stdout and "published bafy" in done.stdout
    for cid in cids:  # exported from the fetched blocks, card included
        assert (tmp_path / "merger" / "content" / cid / "mosaic-card.json").is_file()
    assert missing.returncode == 1 and "cannot fetch adapter bafkrei" in missing.stderr, missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr
