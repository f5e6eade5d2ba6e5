"""Discovery benchmark: how fast records spread, how fast dials are, what an idle node costs.

Runs real nodes on 127.0.0.1 in one trio process (fixed identities, as in the
test harness) and prints one table.  For N = 5, 10, 20:

* start    - seconds to start N nodes one after another (each bootstraps from node 0)
* join     - a new node starts; seconds until its record is on all N+1 nodes
* update   - a node re-announces (new seq); seconds until all N+1 nodes hold it (gossip)
* dht      - a node that lost its table fetches all N+1 other records from the DHT
             (one sync_from_dht: a network GET per known peer id, in parallel)
* dial     - median / p90 ms for a fresh Noise-authenticated dial to a node
* idle CPU - percent of one core per node over a 10 s idle window (production intervals)

Usage: .venv/bin/python benchmarks/discovery.py [--sizes 5,10,20] [--idle 10]
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.net.discovery import dial, refresh_routing_table  # noqa: E402
from node.net.host import build_host, listen_multiaddrs  # noqa: E402
from node.net.keys import libp2p_key_pair  # noqa: E402
from protocol import Identity  # noqa: E402
from tests.cluster.harness import in_process_cluster  # noqa: E402

# Production upkeep intervals (NetConfig defaults) so the idle figure is what a deployment pays.
PRODUCTION = dict(record_ttl=300.0, announce_interval=60.0, dht_republish_interval=120.0, dht_sync_interval=30.0, routing_refresh_interval=600.0)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _all_hold(nodes, peer_id: str, seq: int, timeout: float = 60.0) -> float:
    started = time.monotonic()
    with trio.fail_after(timeout):
        for node in nodes:
            await node.registry.wait_for(lambda r: (rec := r.get(peer_id)) is not None and rec.seq >= seq)
    return time.monotonic() - started


async def measure(n: int, idle_s: float) -> dict[str, float]:
    out: dict[str, float] = {}
    async with in_process_cluster(0) as cluster:
        started = time.monotonic()
        for i in range(n):
            await cluster.add(i, **PRODUCTION)
        out["start"] = time.monotonic() - started
        with trio.fail_after(60):
            for node in cluster.nodes:
                await node.registry.wait_for(lambda r: len(r) == n)

        joined_at = time.monotonic()
        newcomer = await cluster.add(n, **PRODUCTION)
        await _all_hold(cluster.nodes, newcomer.peer_id, newcomer.own_record().seq)
        out["join"] = time.monotonic() - joined_at

        speaker = cluster.nodes[n // 2]
        before = speaker.own_record().seq
        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speaker.announce_now)  # its DHT put runs alongside; gossip is measured
            await _all_hold(cluster.nodes, speaker.peer_id, before + 1)
            out["update"] = time.monotonic() - began

        late = await cluster.add(n + 1, **PRODUCTION)
        with trio.fail_after(60):
            await late.registry.wait_for(lambda r: len(r) == n + 2)
        for peer_id in late.registry.peer_ids() - {late.peer_id}:
            late.registry.forget(peer_id)  # as if gossip and the exchange had been missed
        began = time.monotonic()
        rounds = 0
        while len(late.registry) < n + 2 and rounds < 10:
            rounds += 1
            await late.sync_from_dht()
            if len(late.registry) < n + 2:
                # Peer ids the routing table does not know yet: one more walk, as the upkeep loop does.
                await refresh_routing_table(late.dht)
        out["dht"] = time.monotonic() - began
        out["dht_rounds"] = rounds
        out["dht_found"] = len(late.registry) - 1

        client = build_host(libp2p_key_pair(Identity.generate()), ["/ip4/127.0.0.1/tcp/0"])
        dials = []
        async with client.run(listen_addrs=listen_multiaddrs(["/ip4/127.0.0.1/tcp/0"])):
            for node in cluster.nodes[:20]:
                t0 = time.monotonic()
                await dial(client, node.full_multiaddrs()[0])
                dials.append((time.monotonic() - t0) * 1000)
        out["dial_med"] = statistics.median(dials)
        out["dial_p90"] = sorted(dials)[int(0.9 * (len(dials) - 1))]

        if idle_s > 0:
            # Let start-up work settle first: each node's DHT walks, republishes of the values
            # it holds and the auto-connector's mesh-building keep one process busy for
            # ~1.2*N seconds after convergence (measured: 3.7 %/node at N=20 until then).
            await trio.sleep(max(5.0, 1.5 * n))
            cpu0, wall0 = _cpu(), time.monotonic()
            await trio.sleep(idle_s)
            cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
            out["idle_cpu_pct_per_node"] = 100.0 * cpu / wall / len(cluster.nodes)
        out["nodes"] = len(cluster.nodes)
    return out


async def main(sizes: list[int], idle_s: float) -> None:
    rows = []
    for n in sizes:
        result = await measure(n, idle_s)
        rows.append((n, result))
        print(f"  N={n} done: {result}", file=sys.stderr)
    print()
    print("discovery on 127.0.0.1, all nodes in one process (2 shared cores)")
    header = f"{'N':>3}  {'start s':>8}  {'join s':>7}  {'update s':>8}  {'dht s (found, rounds)':>22}  {'dial ms (med/p90)':>18}  {'idle CPU %/node':>15}"
    print(header)
    print("-" * len(header))
    for n, r in rows:
        dial_text = f"{r['dial_med']:.1f}/{r['dial_p90']:.1f}"
        dht_text = f"{r['dht']:.3f} ({r['dht_found']}/{n + 1}, {r['dht_rounds']})"
        print(f"{n:>3}  {r['start']:>8.2f}  {r['join']:>7.3f}  {r['update']:>8.3f}  {dht_text:>22}  {dial_text:>18}  {r.get('idle_cpu_pct_per_node', float('nan')):>15.3f}")
    base = rows[0][1]
    for n, r in rows[1:]:
        print(f"ratio N={n} vs N={rows[0][0]}: join x{r['join'] / base['join']:.2f}, update x{r['update'] / base['update']:.2f}, dht x{r['dht'] / base['dht']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window in seconds (0: skip)")
    args = parser.parse_args()
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("mosaic").setLevel(logging.WARNING)
    trio.run(main, [int(s) for s in args.sizes.split(",")], args.idle)
