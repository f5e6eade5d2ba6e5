"""Fan-out latency: vote / moa over k = 1, 2, 4 experts vs the slowest of those experts alone.

A coordinator node (no model, in this process) and four expert nodes, each a
``python -m node start`` process with its own copy of the embedded SmolLM2 and
one torch thread, on loopback (one process per expert as deployed: four torch
workers in one process starve the trio loop of the GIL).  For every k, in one run:

* single: each expert answers alone (``route`` pinned to it), the same prompt
  and token budget (greedy);
* vote-k: ``vote`` with ``k`` (quorum: all k, so nothing is cut off);
* moa-k: ``moa`` with ``k`` proposers; its fan-out part is the proposer stage
  (first proposer start to last proposer end, from the trace); the aggregator
  is one more sequential generation on top.

* together-k: the same k experts each asked alone (``route`` pinned), all k
  queries at once: the time k experts need side by side on this machine, with
  no aggregation.  fan-out / together-k isolates what coordination costs from
  what k busy experts sharing too few cores cost.

ratio = latency / slowest single expert among the ones the strategy used.
Target (issue 8): fan-out part <= 1.3x.  Rounds alternate the variants so
load from other processes hits all alike; medians are reported.  The experts
share this machine's cores: on a box with fewer cores than k busy experts the
ratio includes that contention, not only coordination (say which box).

    .venv/bin/python benchmarks/fanout.py [--tokens 32] [--rounds 3] [--ks 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import aclosing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "Explain in a few sentences why the sky is blue."


async def timed(host, peer: str, query) -> tuple[float, object]:
    import protocol as p
    from node.coordinator.client import ask

    started = time.perf_counter()
    async with aclosing(ask(host, peer, query)) as events:
        async for event in events:
            if isinstance(event, p.QueryResult):
                return time.perf_counter() - started, event
    raise RuntimeError("no result")


async def side_by_side(host, peer: str, queries) -> float:
    """Wall time until every one of ``queries`` (sent at once) has its answer."""
    import trio

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for q in queries:
            nursery.start_soon(timed, host, peer, q)
    return time.perf_counter() - started


def fan_out_seconds(result, role: str = "proposer") -> float:
    steps = [s for s in result.trace.steps if s.role == role]
    return max(s.started_s + s.seconds for s in steps) - min(s.started_s for s in steps)


async def main(args: argparse.Namespace) -> None:
    import tempfile

    import trio

    import protocol as p
    from node.coordinator.service import QueryService
    from node.net.discovery import dial
    from tests.cluster.harness import in_process_cluster, start_process
    from tests.cluster.test_query import client_host

    ks = [int(k) for k in args.ks.split(",")]
    n = max(ks)
    sampling = p.SamplingParams(max_new_tokens=args.tokens, temperature=0.0)
    messages = (p.ChatMessage(role="user", content=PROMPT),)

    def query(strategy: str, **fields):
        return p.QueryRequest(request_id=f"bench-{time.perf_counter_ns()}", strategy=strategy, messages=messages,
                              sampling=sampling, timeout_s=600.0, **fields)

    tmp = tempfile.TemporaryDirectory(prefix="mosaic-fanout-")
    procs = []
    try:
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()], record_ttl=30.0)
            addr = coordinator.full_multiaddrs()[0]
            for i in range(1, n + 1):
                procs.append(await trio.to_thread.run_sync(lambda i=i: start_process(
                    Path(tmp.name), i, bootstrap=[addr], expert=True, timeout=300.0,
                    config_text="[expert]\nthreads = 1\n", extra=["--record-ttl", "30"])))
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == n, timeout=120)
            async with client_host() as host:
                peer = await dial(host, addr)
                await timed(host, peer, query("vote", params={"k": n}))  # warm-up: every expert once
                singles: dict[str, list[float]] = {e.peer_id: [] for e in procs}
                runs: dict[str, list[tuple[float, object]]] = {}
                together: dict[int, list[float]] = {}
                for _ in range(args.rounds):
                    for e in procs:
                        seconds, _ = await timed(host, peer, query("route", model=e.peer_id))
                        singles[e.peer_id].append(seconds)
                    for k in ks:
                        together.setdefault(k, []).append(await side_by_side(host, peer, [
                            query("route", model=e.peer_id) for e in procs[:k]]))
                        for strategy in ("vote", "moa"):
                            runs.setdefault(f"{strategy}-{k}", []).append(
                                await timed(host, peer, query(strategy, params={"k": k, "k_min": k})))
    finally:
        for proc in procs:
            proc.process.kill()
            proc.process.wait()
        tmp.cleanup()
    single = {peer_id: statistics.median(v) for peer_id, v in singles.items()}
    print(f"single experts (median of {args.rounds}, {args.tokens} tokens): "
          + ", ".join(f"{s:.2f}s" for s in single.values()))
    print("together-k (k experts asked at once, no aggregation): "
          + ", ".join(f"k={k} {statistics.median(v):.2f}s" for k, v in together.items()))
    print(f"{'variant':<8} {'e2e s':>7} {'fan-out s':>9} {'slowest 1':>9} {'e2e/1':>6} {'fan-out/1':>9}"
          f" {'fan-out/together-k':>18}")
    for name, samples in runs.items():
        e2e = statistics.median(s for s, _ in samples)
        fan = statistics.median(fan_out_seconds(r) for _, r in samples)
        used = {s.peer for _, r in samples for s in r.trace.steps if s.role == "proposer"}
        slowest = max(single[u] for u in used)
        side = statistics.median(together[int(name.rsplit("-", 1)[1])])
        print(f"{name:<8} {e2e:7.2f} {fan:9.2f} {slowest:9.2f} {e2e / slowest:6.2f} {fan / slowest:9.2f}"
              f" {fan / side:18.2f}")
    print(f"cpu cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ks", default="1,2,4")
    import trio

    trio.run(main, parser.parse_args())
