"""The team on a real network: a coordinator and four expert processes, every strategy, faults.

Experts are ``python -m node start`` processes serving the embedded model (one
per process, as deployed: in one process four torch workers starve the trio
loop of the GIL), with different self-descriptions and tags; node 2 serves the
``noisy`` adapter too.  The coordinator is an in-process node.  One cluster for
the whole module's story, in order:

1. routing: the question alone picks the expert whose description matches it;
2. every strategy returns a real answer whose trace names the experts asked;
3. SIGKILL of the expert streaming an answer: the next expert continues the
   partial text, the client sees one continuous answer;
4. SIGSTOP of an expert: a vote still answers, the paused expert costs at most
   the grace period.

The story runs on the llama.cpp engine (the default); the torch leg, its small form, starts the
same team with ``--engine torch`` and runs step 2, every strategy (steps 1, 3 and 4 are routing
and fault handling, which do not depend on the engine).
"""

from __future__ import annotations

import os
import signal
import tempfile
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

import protocol as p
from node.coordinator import STRATEGIES
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.net.discovery import dial
from tests.cluster.harness import in_process_cluster, start_process
from tests.cluster.test_collaboration import answer
from tests.cluster.test_query import client_host

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(900)]

EXPERTS = {
    1: ("Arithmetic, numbers and math word problems", "math"),
    2: ("Poetry, rhymes and creative writing", "poetry"),
    3: ("Geography: countries, capital cities, rivers and maps", "geography"),
    4: ("Python programming, software and source code", "code"),
}
CONFIG = "[expert]\nthreads = 1\nmax_batch = 4\n"


@asynccontextmanager
async def process_team(adapter_dir: Path, engine: str):
    with tempfile.TemporaryDirectory(prefix="mosaic-team-") as tmp:
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()], record_ttl=30.0)
            addr = coordinator.full_multiaddrs()[0]
            procs = {}

            async def start(index: int) -> None:
                description, tag = EXPERTS[index]
                extra = ["--description", description, "--tags", tag, "--record-ttl", "30", "--engine", engine]
                if index == 2:
                    extra += ["--adapter", f"noisy={adapter_dir}"]
                procs[index] = await trio.to_thread.run_sync(
                    lambda: start_process(Path(tmp), index, bootstrap=[addr], config_text=CONFIG, expert=True,
                                          timeout=240.0, extra=extra))

            try:
                async with trio.open_nursery() as nursery:
                    for index in EXPERTS:
                        nursery.start_soon(start, index)
                await coordinator.registry.wait_for(lambda r: len(r.experts()) == len(EXPERTS), timeout=90)
                async with client_host() as host:
                    peer = await dial(host, addr)
                    yield coordinator, host, peer, procs
            finally:
                for proc in procs.values():
                    with suppress(ProcessLookupError):
                        os.kill(proc.process.pid, signal.SIGCONT)
                    proc.process.kill()
                    proc.process.wait()


def check_trace(result: p.QueryResult, experts: set[str]) -> None:
    trace = result.trace
    assert trace is not None and trace.strategy == result.strategy and trace.decision
    assert trace.steps and all(step.peer in experts for step in trace.steps)
    assert result.provenance[0].served_by in {s.peer for s in trace.steps if s.status == "ok"}
    for step in trace.steps:
        assert step.input_digest.startswith("sha256:") and step.seconds >= 0
        if step.status == "ok" and step.call == "generate":
            assert step.tokens > 0 and step.expert.startswith("node-")
    for rnd in {s.round for s in trace.steps}:
        for role in ("proposer", "debater", "knowledge"):
            peers = [s.peer for s in trace.steps if s.round == rnd and s.role == role]
            assert len(peers) == len(set(peers)), (result.strategy, role, peers)


ROLES = {"route": {"answer"}, "prompt-route": {"router", "answer"}, "vote": {"proposer"}, "select": {"sampler"},
         "judge": {"proposer", "judge"}, "moa": {"proposer", "aggregator"}, "debate": {"debater"},
         "refine": {"debater", "summarizer"}, "knowledge": {"knowledge", "answer"},
         "decompose": {"decomposer", "composer"}, "cascade": {"cascade", "confidence"}, "fuse": {"fuser"},
         "merge": {"merger", "answer"}}
PARAMS = {"vote": {"k": 3}, "select": {"k": 2, "samples": 2}, "judge": {"k": 3}, "moa": {"k": 3},
          "debate": {"k": 3, "rounds": 2}, "refine": {"k": 2, "rounds": 2}, "knowledge": {"k": 3, "card_tokens": 12},
          "decompose": {"parts": 2, "sub_tokens": 8}, "cascade": {"threshold": 0.99}, "fuse": {"k": 2}}


@pytest.mark.parametrize("engine", ["llama.cpp", "torch"])
async def every_strategy_answers(host, peer: str, experts: set[str]) -> None:
    assert set(ROLES) == set(STRATEGIES)
    for name in STRATEGIES:
        if name == "merge":  # answers on the coordinator's own expert: tests/cluster/test_merge_strategy.py
            continue
        text, result = await answer(host, peer, "What is 6 times 7?", strategy=name, params=PARAMS.get(name, {}))
        assert result.strategy == name and result.text.strip() and text == result.text, name
        check_trace(result, experts)
        assert ROLES[name] <= {s.role for s in result.trace.steps}, (name, result.trace)


async def test_four_expert_processes_answer_as_a_team(lora_adapter_dir, engine):
    with trio.fail_after(880):
        async with process_team(lora_adapter_dir, engine) as (coordinator, host, peer, procs):
            experts = {proc.peer_id for proc in procs.values()}
            by_peer = {proc.peer_id: proc for proc in procs.values()}
            assert {record.engine for record in coordinator.registry.experts()} == {engine}  # as announced
            if engine == "torch":
                await every_strategy_answers(host, peer, experts)
                return

            # 1. Routing by meaning.
            for question, index in (("What is the capital city of France?", 3),
                                    ("Write a Python function that reverses a list.", 4),
                                    ("What is 12 plus 30?", 1)):
                _, result = await answer(host, peer, question)
                assert result.trace.steps[-1].peer == procs[index].peer_id, (question, result.trace.decision)

            # 2. Every strategy.
            await every_strategy_answers(host, peer, experts)

            # 3. SIGKILL the expert that is streaming, after its first tokens.
            chunks: list[p.QueryChunk] = []
            result, killed = None, None
            query = p.QueryRequest(request_id="kill-1", timeout_s=120.0, messages=(p.ChatMessage(
                role="user", content="Count from 1 to 40, separated by commas."),),
                sampling=p.SamplingParams(max_new_tokens=48, temperature=0.0), tags=("math",))
            async with aclosing(ask(host, peer, query)) as events:
                async for event in events:
                    if isinstance(event, p.QueryChunk):
                        chunks.append(event)
                        if killed is None and len(chunks) >= 3:
                            killed = by_peer[event.provenance.served_by]
                            killed.process.send_signal(signal.SIGKILL)
                    else:
                        result = event
            assert killed is not None and result is not None
            assert "".join(c.text for c in chunks) == result.text  # one continuous answer
            cut, cont = result.trace.steps[0], result.trace.steps[-1]
            assert cut.peer == killed.peer_id and cut.status == "failed" and cut.output
            assert cont.continues is not None and cont.status == "ok" and cont.peer != killed.peer_id
            assert result.text.startswith(cut.output) and len(result.text) > len(cut.output)

            # 4. SIGSTOP one expert: a vote over it and another still answers within the grace.
            alive = [proc for proc in procs.values() if proc is not killed]
            paused, other = alive[0], alive[1]
            await answer(host, peer, "Say hi.", max_tokens=2, strategy="vote", params={"k": 3})  # measure them
            paused.process.send_signal(signal.SIGSTOP)
            started = trio.current_time()
            _, result = await answer(host, peer, "What is 2 plus 2?", strategy="vote",
                                     params={"k": 3, "k_min": 2, "grace_s": 1.0})
            elapsed = trio.current_time() - started
            steps = {s.peer: s for s in result.trace.steps if s.role == "proposer"}
            ok = [s for s in steps.values() if s.status == "ok"]
            assert len(ok) >= 2 and result.text.strip()
            if paused.peer_id in steps:  # it was asked (it is not banned): it did not hold the answer up
                assert steps[paused.peer_id].status in ("late", "failed")
            assert elapsed < max(s.seconds for s in ok) + 1.0 + 3.0, result.trace
            assert other.peer_id in {s.peer for s in ok}
