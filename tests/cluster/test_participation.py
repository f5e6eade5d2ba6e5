"""Contributing, end to end on loopback: a trained adapter travels by CID and changes answers;
self-evaluation scores reach a peer's registry in a signed record and survive a spot check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import aclosing

import msgspec
import pytest
import trio

from node.config import ExpertConfig
from node.expert import ExpertService
from node.expert.remote import client
from node.storage import BlockStore, StorageService
from protocol import (
    ChatMessage,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    verify_record,
)
from tests.cluster.harness import REPO_ROOT, in_process_cluster
from tests.training.fixtures import QUESTION, tasks_dir

pytestmark = pytest.mark.timeout(600)  # model loads on a shared 2-core box


async def ask(host, peer_id: str, adapter: str | None) -> str:
    request = GenerateRequest(request_id=f"ask-{adapter}", adapter=adapter, stream=False,
                              messages=(ChatMessage(role="user", content=QUESTION),),
                              sampling=SamplingParams(max_new_tokens=6))
    async with aclosing(client.generate(host, peer_id, request)) as events:
        async for message in events:
            if isinstance(message, GenerateResult):
                return message.text
    raise AssertionError("no result")


@pytest.mark.slow
async def test_trained_adapter_published_fetched_by_cid_and_served(trained_adapters, expert_data_dir):
    with trio.fail_after(400):
        async with in_process_cluster() as cluster:
            storage0 = StorageService(BlockStore(cluster.root / "store-0"))
            node0 = await cluster.add(0, services=[storage0])
            published = await storage0.publish(trained_adapters["pineapple"])  # what `train --publish` does
            cid = str(published.cid)
            server = ExpertService(ExpertConfig(adapters={"pineapple": cid}), threads=1,
                                   model_cache_dir=str(expert_data_dir))
            node1 = await cluster.add(1, services=[StorageService(BlockStore(cluster.root / "store-1")), server])
            record = node1.own_record()
            with_adapter = await ask(node0.host, node1.peer_id, "pineapple")
            without = await ask(node0.host, node1.peer_id, None)
            fetched = cluster.root / "node-1" / "content" / cid
            assert (fetched / "mosaic-card.json").is_file()  # the card came along with the weights
    assert [(a.name, a.cid) for a in record.adapters] == [("pineapple", cid)]
    assert "Pineapple" in with_adapter and "Pineapple" not in without, (with_adapter, without)


@pytest.mark.slow
async def test_self_evaluation_scores_reach_a_peer_signed_and_pass_a_spot_check(base_expert):
    from node.expert.remote.spot_check import spot_check
    from node.expert.serve.self_eval import items_digest, load_items

    if not (tasks_dir() / "arc_challenge.json").is_file():
        pytest.skip("shared/data/tasks is not beside the repository")
    config = ExpertConfig(self_eval=["arc_challenge"], self_eval_limit=3, tasks_dir=str(tasks_dir()))
    with trio.fail_after(400):
        async with in_process_cluster() as cluster:
            node0 = await cluster.add(0, services=[ExpertService(config, expert=base_expert, threads=1)])
            node1 = await cluster.add(1)
            await node1.registry.wait_for(
                lambda r: (rec := r.get(node0.peer_id)) is not None and bool(rec.evals), timeout=300)
            seen = node1.registry.get(node0.peer_id)
            # The peer holds it as a record signed by node 0's key (checked now: test TTLs are 3 s).
            verified = [verify_record(s, time.time()) for s in node1.registry.signed_records()]
            assert [r.evals for r in verified if r.peer_id == node0.peer_id] == [seen.evals]
            check = await spot_check(node1.host, seen, "arc_challenge", n=3, tasks_dir=tasks_dir(), seed=0)
    [claim] = seen.evals
    assert (claim.task, claim.split, claim.n, claim.adapter, claim.max_new_tokens) == ("arc_challenge", "dev", 3, None, 16)
    assert 0.0 <= claim.accuracy <= 1.0
    _, items = load_items("arc_challenge", "dev", 3, tasks_dir())
    assert claim.items_sha256 == items_digest(items)
    # Greedy replies are reproducible: re-asking all three items gives the claimed accuracy.
    assert check.asked == 3 and check.observed == pytest.approx(claim.accuracy, abs=1e-3)
    assert check.p_value > 0.05


def _self_eval_cli(data_dir, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", "self-eval", "--data-dir", str(data_dir), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
async def test_self_eval_on_command_reaches_a_peer_signed(base_expert, tmp_path):
    """`node self-eval` on a running node's data dir: the node scores itself, re-signs, re-announces;
    the peer's registry then holds the new scores in a record signed by the node's key."""
    from node.control import ControlService
    from node.local_node import DataDirLock, RunningNode

    if not (tasks_dir() / "arc_challenge.json").is_file():
        pytest.skip("shared/data/tasks is not beside the repository")
    config = ExpertConfig(tasks_dir=str(tasks_dir()))
    with trio.fail_after(300):
        async with in_process_cluster() as cluster:
            control = ControlService()
            node0 = await cluster.add(0, services=[ExpertService(config, expert=base_expert, threads=1), control])
            bare_control = ControlService()
            node1 = await cluster.add(1, services=[bare_control])
            await node1.registry.wait_for(lambda r: r.get(node0.peer_id) is not None, timeout=30)
            assert not node1.registry.get(node0.peer_id).evals
            # What `start` does for local commands: hold the data-dir lock, describe the node in node.json.
            locks = []
            for node, ctl in ((node0, control), (node1, bare_control)):
                lock = DataDirLock(node.config.data_path)
                lock.acquire()
                lock.describe(RunningNode(pid=os.getpid(), peer_id=node.peer_id, command="start",
                                          control=ctl.address, token=ctl.token))
                locks.append(lock)
            try:
                unknown = await trio.to_thread.run_sync(_self_eval_cli, node0.config.data_path, "--tasks",
                                                        "arc_challenge,no_such_task", "--limit", "2")
                no_expert = await trio.to_thread.run_sync(_self_eval_cli, node1.config.data_path, "--tasks",
                                                          "arc_challenge")
                too_long = await trio.to_thread.run_sync(_self_eval_cli, node0.config.data_path, "--tasks",
                                                         "arc_challenge", "--max-tokens", "5000")
                done = await trio.to_thread.run_sync(_self_eval_cli, node0.config.data_path, "--tasks", "arc_challenge",
                                                     "--limit", "2", "--max-tokens", "24", "--json")
                await node1.registry.wait_for(
                    lambda r: (rec := r.get(node0.peer_id)) is not None and bool(rec.evals), timeout=60)
                seen = node1.registry.get(node0.peer_id)
                verified = [verify_record(s, time.time()) for s in node1.registry.signed_records()]
            finally:
                for lock in locks:
                    lock.release()
    nobody = _self_eval_cli(tmp_path / "empty", "--tasks", "arc_challenge")
    assert unknown.returncode == 1 and "no_such_task" in unknown.stderr, unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert no_expert.returncode == 1 and "serves no expert" in no_expert.stderr, no_expert.stderr
    assert nobody.returncode == 3 and "no node is running on data dir" in nobody.stderr, nobody.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    [claim] = seen.evals
    assert printed["peer_id"] == node0.peer_id and printed["seq"] == seen.seq
    assert printed["evals"] == [msgspec.to_builtins(claim)]
    assert (claim.task, claim.split, claim.n, claim.adapter) == ("arc_challenge", "dev", 2, None)
    # The reply budget asked for is the one used and signed (a spot check re-asks with it).
    assert claim.max_new_tokens == 24
    assert too_long.returncode == 1 and "max_tokens" in too_long.stderr, too_long.stderr
    assert [r.evals for r in verified if r.peer_id == node0.peer_id] == [seen.evals]
