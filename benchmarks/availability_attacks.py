"""Honest service under availability attacks (issue 22): connection churn, "verified" Sybils, request floods.

Each attack runs against real nodes (one trio process, loopback, SmolLM2-135M
expert) while an honest client asks ``route`` queries before, during and after
it.  Printed per attack and phase: queries answered by the real expert / asked,
median and max latency.  The table goes in docs/security.md (issue 22 section).

* churn   - ``--churn`` fresh identities connect to the expert's node and hang
            up, 16 at a time (py-libp2p alone locks out for good after 250);
* sybils  - ``--sybils`` identities push their own zero-load record named like
            the expert over /mosaic/record/1 and hang up, at the expert's node
            and at a coordinator-only node (queries go to the coordinator);
* flood   - 5 identities x 16 streams keep the expert's queue full with valid
            generations; queries go through a coordinator-only node.

Usage: .venv/bin/python benchmarks/availability_attacks.py [--churn 1000] [--sybils 40] [--queries 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from node.net.discovery import dial
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from tests.attacks.adversary import LOOPBACK, churn, close_listeners, push_and_hang_up_sybils
from tests.attacks.test_request_flood import FLOODERS, STREAMS_EACH, _flood
from tests.cluster.harness import in_process_cluster

Outcome = tuple[bool, float]


async def honest_query(host: object, peer_id: str, expert_id: str) -> Outcome:
    """One ``route`` query; ok when the real expert answered."""
    request = p.QueryRequest(request_id=f"honest-{time.monotonic_ns()}", prompt="Name a primary colour.",
                             timeout_s=60.0, sampling=p.SamplingParams(max_new_tokens=8), tags=("test",),
                             params={"semantic": False})
    started = time.monotonic()
    try:
        with trio.fail_after(65):
            async with aclosing(ask(host, peer_id, request)) as events:  # type: ignore[arg-type]
                async for event in events:
                    if isinstance(event, p.QueryResult):
                        ok = bool(event.text) and event.provenance[0].served_by == expert_id
                        if not ok:
                            print(f"  answered by {event.provenance[0].served_by[-8:]}", flush=True)
                        return ok, time.monotonic() - started
    except Exception as exc:  # noqa: BLE001 - counted as a failed query, the reason printed
        print(f"  failed query: {type(exc).__name__}: {exc}"[:400], flush=True)
    return False, time.monotonic() - started


async def phase(host: object, peer_id: str, expert_id: str, count: int) -> list[Outcome]:
    return [await honest_query(host, peer_id, expert_id) for _ in range(count)]


def summary(outcomes: list[Outcome]) -> str:
    times = sorted(seconds for ok, seconds in outcomes if ok)
    if not times:
        return f"0/{len(outcomes)}"
    return f"{len(times)}/{len(outcomes)}, {statistics.median(times):.1f} s (max {times[-1]:.1f})"


async def measure(label: str, host: object, peer_id: str, expert_id: str, count: int,
                  attack: Callable[[], Awaitable[None]], rows: list[str]) -> None:
    """Queries before, during (while ``attack`` runs) and after it; one table row."""
    before = await phase(host, peer_id, expert_id, count)
    during: list[Outcome] = []
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def run_attack() -> None:
            await attack()
            done.set()

        nursery.start_soon(run_attack)
        while not done.is_set() or not during:
            during.append(await honest_query(host, peer_id, expert_id))
    attack_s = time.monotonic() - started
    after = await phase(host, peer_id, expert_id, count)
    row = f"| {label} | {summary(before)} | {summary(during)} | {summary(after)} | {attack_s:.0f} s |"
    print(row, flush=True)
    rows.append(row)


async def client(nursery: trio.Nursery, addr: str) -> object:
    host = build_host(libp2p_key_pair(p.Identity.generate()), LOOPBACK)

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with host.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await close_listeners(host)

    await nursery.start(run)
    await dial(host, addr)
    return host


async def run(model: object, args: argparse.Namespace) -> list[str]:
    rows: list[str] = []
    if args.churn:
        async with in_process_cluster() as cluster, trio.open_nursery() as nursery:
            expert = await cluster.add(0, services=[ExpertService(expert=model, threads=1), QueryService()])
            addr = expert.full_multiaddrs()[0]
            host = await client(nursery, addr)
            await honest_query(host, expert.peer_id, expert.peer_id)  # warm-up

            async def churn_attack() -> None:
                failed = await churn(addr, args.churn)
                print(f"  churn: {args.churn} connections, {failed} failed", flush=True)

            await measure(f"connection churn ({args.churn} identities)", host, expert.peer_id, expert.peer_id,
                          args.queries, churn_attack, rows)
            nursery.cancel_scope.cancel()
    if args.sybils:
        async with in_process_cluster() as cluster, trio.open_nursery() as nursery:
            expert = await cluster.add(0, services=[ExpertService(expert=model, threads=1), QueryService()])
            coordinator = await cluster.add(1, services=[QueryService()])
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=30)
            host = await client(nursery, coordinator.full_multiaddrs()[0])
            await honest_query(host, coordinator.peer_id, expert.peer_id)

            async def sybil_attack() -> None:
                for node in (expert, coordinator):
                    await push_and_hang_up_sybils(node.full_multiaddrs()[0], args.sybils, name=expert.config.name)

            await measure(f"verified Sybils ({args.sybils} per node)", host, coordinator.peer_id, expert.peer_id,
                          args.queries, sybil_attack, rows)
            nursery.cancel_scope.cancel()
    if args.flood:
        async with in_process_cluster() as cluster, trio.open_nursery() as nursery:
            expert = await cluster.add(0, services=[ExpertService(expert=model, threads=1)])
            coordinator = await cluster.add(1, services=[QueryService()])
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=30)
            host = await client(nursery, coordinator.full_multiaddrs()[0])
            await honest_query(host, coordinator.peer_id, expert.peer_id)
            worker = expert.services[0].worker  # type: ignore[attr-defined]

            async def flood_attack() -> None:
                served = [0]
                with trio.move_on_after(args.flood):
                    async with trio.open_nursery() as flood:
                        for _ in range(FLOODERS):
                            flooder = await client(flood, expert.full_multiaddrs()[0])
                            for _ in range(STREAMS_EACH):
                                flood.start_soon(_flood, flooder, expert.peer_id, served)
                print(f"  flood: {served[0]} flood requests served, {worker.busy_rejections} refused busy",
                      flush=True)

            await measure(f"request flood ({FLOODERS} x {STREAMS_EACH} streams, {args.flood:g} s)", host,
                          coordinator.peer_id, expert.peer_id, args.queries, flood_attack, rows)
            nursery.cancel_scope.cancel()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--churn", type=int, default=1000, help="churned identities (0: skip)")
    parser.add_argument("--sybils", type=int, default=40, help="push-and-hang-up Sybils per node (0: skip)")
    parser.add_argument("--flood", type=float, default=60.0, help="seconds of request flood (0: skip)")
    parser.add_argument("--queries", type=int, default=3, help="honest queries before and after each attack")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    import torch

    torch.set_num_threads(1)
    from node.expert.loader import load_expert

    model = load_expert(None, device="cpu")
    print("| attack | before: ok, median (max) | during | after | attack ran |")
    print("|---|---|---|---|---|")
    trio.run(run, model, args)


if __name__ == "__main__":
    main()
