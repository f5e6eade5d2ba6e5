"""Attacks on experts and what they make a node do (issue 22 items 3, 4, 5): honest queries before,
during and after each attack, on real nodes on loopback.

* tarpit - two honest experts, then an expert that answers every request with ``Queued``
           keep-alives every 0.9 s and never a token, advertising load 0 (it ranks first);
           then it leaves.  Honest ``route`` queries (deadline 40 s): success and latency.
* merge  - an expert node serving the real SmolLM2-135M; during the attack a peer sends
           ``merge`` queries naming repeated-leaf DAGs that declare 3 GiB and 2 GiB while
           honest ``route`` queries run.  Also printed: the victim's disk growth and how
           long each bomb query took to be refused.
* liar   - two weak honest experts (right on 80 % of easy known-answer questions) vote;
           then an expert that always answers a wrong option joins (load 0: it ranks
           first), then runs on after it is demoted.  Spot checks at the production rate,
           with the node's own known-answer items (no task files).  Success: the vote's
           answer is right; also printed: answers the liar wrote, when it was demoted.

Honest experts in tarpit and liar are scripted protocol speakers (answers at once: the
latency is the attack's); the merge victim is a real model.

Usage: .venv/bin/python benchmarks/attacks_expert.py [--queries 10] [--attacks tarpit merge liar]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import protocol as p  # noqa: E402
from node.coordinator import reputation as reputation_module  # noqa: E402
from node.coordinator.calls import QueryFailed  # noqa: E402
from node.coordinator.client import ask  # noqa: E402
from node.coordinator.known_answers import arithmetic  # noqa: E402
from node.coordinator.reputation import SpotChecker  # noqa: E402
from node.coordinator.service import QueryService  # noqa: E402
from node.evaluation import build_prompt, score  # noqa: E402
from node.storage import BlockStore, StorageService  # noqa: E402
from tests.attacks import test_liar_writes_answer as liar_test  # noqa: E402
from tests.attacks.test_fetch_bomb import bomb  # noqa: E402
from tests.attacks.test_tarpit import HonestExpert, TarpitExpert  # noqa: E402
from tests.cluster.harness import in_process_cluster  # noqa: E402
from tests.cluster.test_query import client_host  # noqa: E402

NET = dict(record_ttl=120.0, announce_interval=10.0)
ROWS: list[tuple[str, str, str, str, str, str]] = []


def row(attack: str, phase: str, outcomes: list[tuple[bool, float]], note: str = "") -> None:
    ok = [s for good, s in outcomes if good]
    latencies = sorted(s for _, s in outcomes)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
    ROWS.append((attack, phase, f"{len(ok)}/{len(outcomes)}",
                 f"{statistics.median(latencies):.2f}" if latencies else "-", f"{p95:.2f}", note))
    print(f"  {attack:7s} {phase:7s} ok {len(ok)}/{len(outcomes)}  median {ROWS[-1][3]} s  p95 {p95:.2f} s  {note}",
          flush=True)


async def timed(host, peer: str, request: p.QueryRequest, deadline: float) -> tuple[p.QueryResult | None, float]:
    began = time.monotonic()
    try:
        with trio.fail_after(deadline + 10):
            async with aclosing(ask(host, peer, request)) as events:
                async for event in events:
                    last = event
    except (QueryFailed, trio.TooSlowError):
        return None, time.monotonic() - began
    return (last if isinstance(last, p.QueryResult) else None), time.monotonic() - began


# --------------------------------------------------------------------------- tarpit


async def tarpit(queries: int) -> None:
    deadline = 40.0

    async def honest_route(host, peer: str, n: int) -> tuple[bool, float]:
        request = p.QueryRequest(request_id=f"tarpit-{n}-{time.monotonic_ns()}", prompt="What is six times seven?",
                                 params={"semantic": False}, sampling=p.SamplingParams(max_new_tokens=8),
                                 timeout_s=deadline)
        result, seconds = await timed(host, peer, request, deadline)
        return result is not None and result.text == HonestExpert().answer, seconds

    async with in_process_cluster() as cluster:
        coordinator = await cluster.add(0, services=[QueryService()], **NET)
        for i in range(2):
            await cluster.add(1 + i, services=[HonestExpert()], **NET)
        client = await cluster.add(3, **NET)
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=60)
        row("tarpit", "before", [await honest_route(client.host, coordinator.peer_id, n) for n in range(queries)])
        pit = await cluster.add(4, services=[TarpitExpert()], **NET)
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 3, timeout=60)
        during = [await honest_route(client.host, coordinator.peer_id, n) for n in range(queries)]
        health = coordinator.service(QueryService).coordinator.health
        row("tarpit", "during", during, f"tarpit penalised: {health.failures(pit.peer_id):.1f} failures")
        cluster.stop(pit)
        row("tarpit", "after", [await honest_route(client.host, coordinator.peer_id, n) for n in range(queries)],
            "tarpit gone")
        cluster.nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- merge bomb


def _stored(*paths: Path) -> int:
    return sum(f.stat().st_size for path in paths if path.exists() for f in path.rglob("*") if f.is_file())


async def merge(queries: int) -> None:
    from node.expert.model.loader import load_expert
    from node.expert.serve.service import ExpertService

    cache = os.environ.get("MOSAIC_CACHE_DIR") or tempfile.mkdtemp(prefix="mosaic-bench-cache-")
    expert = await trio.to_thread.run_sync(lambda: load_expert(None, cache_dir=cache, device="cpu"))
    pairs = [[bomb(56, 1024 * 1024), bomb(46, 1024 * 1024)]]  # ~1 MiB each; 3.06 and 2.07 GiB declared
    deadline = 60.0

    async def honest(host, peer: str, n: int) -> tuple[bool, float]:
        request = p.QueryRequest(request_id=f"honest-{n}-{time.monotonic_ns()}", prompt="Name a colour.",
                                 params={"semantic": False}, sampling=p.SamplingParams(max_new_tokens=8),
                                 timeout_s=deadline)
        result, seconds = await timed(host, peer, request, deadline)
        return result is not None and bool(result.text.strip()), seconds

    async with in_process_cluster() as cluster:
        evil = StorageService(BlockStore(cluster.root / "evil-store"))
        attacker = await cluster.add(0, services=[evil])
        victim = await cluster.add(1, services=[StorageService(BlockStore(cluster.root / "victim-store")),
                                                ExpertService(expert=expert, threads=1), QueryService()])
        for pair in pairs:
            for dag in pair:
                for cid, data in dag:
                    evil.store.put(cid, data)
                evil.store.pin(dag[0][0])
                await evil.announce(dag[0][0])
        await victim.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=60)
        async with client_host() as host:
            from node.net.discovery import dial

            peer = await dial(host, victim.full_multiaddrs()[0])
            row("merge", "before", [await honest(host, peer, n) for n in range(queries)])
            disk = _stored(victim.config.data_path, cluster.root / "victim-store")
            refused: list[tuple[str, float]] = []

            async def attack() -> None:
                for n in range(queries):
                    for pair in pairs:
                        request = p.QueryRequest(
                            request_id=f"bomb-{n}-{time.monotonic_ns()}", strategy="merge", prompt="hi",
                            params={"adapters": ",".join(str(d[0][0]) for d in pair), "weights": "0.5,0.5"},
                            timeout_s=deadline)
                        began = time.monotonic()
                        try:
                            async with aclosing(ask(attacker.host, victim.peer_id, request)) as events:
                                async for _ in events:
                                    pass
                            refused.append(("answered", time.monotonic() - began))
                        except QueryFailed as exc:
                            refused.append((exc.code, time.monotonic() - began))

            during: list[tuple[bool, float]] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack)
                for n in range(queries):
                    during.append(await honest(host, peer, n))
            grew = _stored(victim.config.data_path, cluster.root / "victim-store") - disk
            codes = sorted({c for c, _ in refused})
            worst = max(s for _, s in refused)
            row("merge", "during", during, f"{len(refused)} bomb queries ({'/'.join(codes)}, each <= {worst:.2f} s); "
                                           f"victim disk grew {grew:,} bytes")
            row("merge", "after", [await honest(host, peer, n) for n in range(queries)])
        cluster.nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- liar


async def liar(queries: int) -> None:
    reputation_module.find_tasks_dir = lambda: None  # an installed node: no shared/ task files
    questions = arithmetic(4 * queries, seed=1)  # not the spot checks' items (seed 0)
    liar_test.KNOWN.update({build_prompt(item): item for item in questions})
    asked = iter(questions)

    async def vote(engine, n: int, liar_id: str | None) -> tuple[bool, float, bool]:
        item = next(asked)
        request = p.QueryRequest(request_id=f"liar-{n}-{time.monotonic_ns()}", strategy="vote",
                                 params={"k": 3, "k_min": 3}, timeout_s=30.0,
                                 messages=(p.ChatMessage(role="user", content=build_prompt(item)),),
                                 sampling=p.SamplingParams(max_new_tokens=4))
        began = time.monotonic()
        last = None
        async with engine.answer(request) as events:
            async for event in events:
                last = event
        seconds = time.monotonic() - began
        assert isinstance(last, p.QueryResult)
        wrote = bool(liar_id and last.provenance and last.provenance[0].served_by == liar_id)
        return score(item, last.text).correct, seconds, wrote

    async with in_process_cluster() as cluster:
        coordinator = await cluster.add(0, services=[QueryService()], **NET)
        for i in range(2):
            await cluster.add(1 + i, services=[liar_test.WeakHonestExpert(f"honest-{i}")], **NET)
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=60)
        engine = coordinator.service(QueryService).coordinator
        engine.spot_checks = SpotChecker(engine.reputation, rng=random.Random(22))  # the production rate
        before = [await vote(engine, n, None) for n in range(queries)]
        row("liar", "before", [(ok, s) for ok, s, _ in before])
        bad = await cluster.add(3, services=[liar_test.AlwaysWrongExpert()], **NET)
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 3, timeout=60)
        during, demoted_at = [], None
        n = 0
        while demoted_at is None and n < 3 * queries:
            during.append(await vote(engine, n, bad.peer_id))
            n += 1
            if engine.reputation.demoted(bad.peer_id):
                demoted_at = n
        row("liar", "during", [(ok, s) for ok, s, _ in during],
            f"liar wrote {sum(w for *_, w in during)}/{len(during)}; demoted after {demoted_at} queries "
            f"({engine.spot_checks.checks} spot checks)")
        after = [await vote(engine, n, bad.peer_id) for n in range(queries)]
        row("liar", "after", [(ok, s) for ok, s, _ in after], f"liar wrote {sum(w for *_, w in after)}/{len(after)}")
        cluster.nursery.cancel_scope.cancel()


async def main(args: argparse.Namespace) -> None:
    for name in args.attacks:
        print(f"{name}:", flush=True)
        await {"tarpit": tarpit, "merge": merge, "liar": liar}[name](args.queries)
    print("\n| attack | phase | honest ok | median s | p95 s | note |\n|---|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10, help="honest queries per phase")
    parser.add_argument("--attacks", nargs="+", default=["tarpit", "merge", "liar"], choices=["tarpit", "merge", "liar"])
    logging.disable(logging.WARNING)
    trio.run(main, parser.parse_args())
