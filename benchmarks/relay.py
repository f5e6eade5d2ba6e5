"""Queries to an expert behind NAT: direct vs relayed vs after hole punching (issue 20).

Builds the namespaces of tests/nat (needs root, iproute2, iptables), starts a relay in
``pub``, the expert (SmolLM2-135M) in home A (cone NAT), and three coordinators:

* ``direct``:     in home A itself (same LAN as the expert: a plain TCP connection);
* ``relayed``:    in home C behind a symmetric NAT (hole punching fails, every byte goes
                  through the relay);
* ``holepunched``: in home B behind a cone NAT, measured after DCUtR made the connection direct.

For each it runs ``--queries`` identical greedy queries and prints the median expert-call
latency (the trace step's seconds, as seen by the coordinator), tokens/s of that call, and
for the relayed case the relay's CPU seconds and bytes relayed per query.  Ratios are
against ``direct`` in the same run.

    sudo .venv/bin/python benchmarks/relay.py --queries 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.nat import topology  # noqa: E402
from tests.nat.test_nat_relay import CONFIG, Net, connection_to, steps_of  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(net: Net, name: str, queries: int) -> dict[str, float]:
    latencies, rates = [], []
    for _ in range(queries):
        step = steps_of(net.query(name, "Name a color."))[0]
        latencies.append(step["seconds"])
        rates.append(step["tokens"] / step["seconds"] if step["seconds"] else 0.0)
    return {"latency_s": statistics.median(latencies), "tokens_per_s": statistics.median(rates),
            "path": step["path"]}  # type: ignore[dict-item]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=5)
    args = parser.parse_args()
    reason = topology.netns_available()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    topo = topology.build({"A": "cone", "B": "cone", "C": "symmetric"})
    root = Path(tempfile.mkdtemp(prefix="mosaic-relay-bench-"))
    (root / "nat.toml").write_text(CONFIG)
    net = Net(topo, root)
    try:
        relay = net.start("relay1", topo.pub, 0, f"/ip4/{topology.PUBLIC_IP}/tcp/4001", "--relay-service",
                          "--reachability", "public", http=8090)
        boot = ["--bootstrap", relay.addr]
        expert = net.start("expert", topo.homes["A"].ns, 2, "/ip4/0.0.0.0/tcp/4001", *boot, expert=True,
                           http=8090, timeout=300)
        net.start("direct", topo.homes["A"].ns, 3, "/ip4/0.0.0.0/tcp/4002", *boot, "--reachability", "public",
                  http=8091)
        net.start("holepunched", topo.homes["B"].ns, 4, "/ip4/0.0.0.0/tcp/4001", *boot, http=8090)
        net.start("relayed", topo.homes["C"].ns, 5, "/ip4/0.0.0.0/tcp/4001", *boot, http=8090)
        for name in ("direct", "holepunched", "relayed"):
            net.wait(f"{name} to know the expert and its circuit address",
                     lambda name=name: any(p["name"] == "expert" and p.get("base_model") and
                                           any("/p2p-circuit/" in a for a in p["multiaddrs"])
                                           for p in net.status(name)["peers"]), 120)
        # Warm up: the first query of each coordinator opens its connection (relayed for B and C).
        for name in ("direct", "holepunched", "relayed"):
            net.query(name, "Hi")
        results = {"direct": measure(net, "direct", args.queries)}
        try:
            net.wait("hole punching for B", lambda: any(
                "/p2p-circuit" not in a for a in (connection_to(net.status("holepunched"), expert.peer_id) or {}).get(
                    "addrs", [])), 90)
            results["holepunched"] = measure(net, "holepunched", args.queries)
        except AssertionError:
            print("holepunched: DCUtR did not make B's connection direct within 90 s (3 attempts); skipped")
        before_cpu, before = cpu_seconds(relay.process.pid), net.status("relay1")["nat"]["relay_service"]
        started = time.monotonic()
        results["relayed"] = measure(net, "relayed", args.queries)
        wall = time.monotonic() - started
        after_cpu, after = cpu_seconds(relay.process.pid), net.status("relay1")["nat"]["relay_service"]
        base = results["direct"]
        print(f"{'mode':<12} {'path':<8} {'latency s':>10} {'tokens/s':>9} {'lat/direct':>11} {'tok/direct':>11}")
        for mode, r in results.items():
            print(f"{mode:<12} {r['path']:<8} {r['latency_s']:>10.3f} {r['tokens_per_s']:>9.2f} "
                  f"{r['latency_s'] / base['latency_s']:>11.2f} {r['tokens_per_s'] / base['tokens_per_s']:>11.2f}")
        per_query_bytes = (after["bytes_relayed"] - before["bytes_relayed"]) / args.queries
        per_query_cpu = (after_cpu - before_cpu) / args.queries
        print(f"relay per relayed query: {per_query_bytes / 1024:.1f} KiB relayed, {per_query_cpu * 1000:.1f} ms CPU "
              f"(relay process, includes its idle upkeep over {wall:.1f} s)")
    finally:
        for proc in net.procs.values():
            if proc.process.poll() is None:
                proc.process.kill()
            proc.process.wait(timeout=10)
        topo.teardown()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
