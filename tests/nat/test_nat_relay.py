"""Nodes behind NAT, in Linux network namespaces this module builds (issue 20).

    pub: relay1 10.99.0.1:4001, relay2 10.99.0.2:4001 (both --relay-service, bootstrap)
    hA (cone NAT):      the expert (SmolLM2-135M), holds one relay reservation
    hB (cone NAT):      a coordinator: reaches the expert through a relay, then DCUtR makes it direct
    hC (symmetric NAT): a coordinator: hole punching cannot work, it stays relayed

Every node is a real ``python -m node start`` process run with ``ip netns exec``.  Only
the 10.x addresses of the veths created here are used.  The namespaces are deleted by
the fixture's finalizer, also when a test fails.  Needs root (CI has it) and iproute2 +
iptables (scripts/install.sh installs them as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import LISTEN_LINE, REPO_ROOT, _read_line, prepare_data_dir
from tests.nat import topology

REASON = topology.netns_available()
if REASON and os.environ.get("CI"):
    raise RuntimeError(f"NAT tests must run in CI: {REASON}")
# Real processes and a real model on a shared CI box: each test waits on the network for tens of seconds.
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.timeout(300)]

CONFIG = """
[net]
record_ttl = 120.0
announce_interval = 2.0
dht_republish_interval = 5.0
dht_sync_interval = 2.0
autonat_interval = 10.0
autonat_confirmations = 1
relay_check_interval = 1.0
relay_reservations = 1
[net.relay_limits]
reservations_per_ip = 2
circuits_per_peer = 3
circuit_rate_per_ip = 30
"""
HTTP_PORT = 8090


@dataclass
class Proc:
    name: str
    ns: str
    peer_id: str
    addr: str
    process: subprocess.Popen[str]
    log: Path
    http: int | None = None


@dataclass
class Net:
    topo: topology.Topology
    root: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, ns: str, index: int, listen: str, *extra: str, expert: bool = False,
              http: int | None = None, timeout: float = 60.0) -> Proc:
        data_dir = prepare_data_dir(self.root, index)
        args = ["ip", "netns", "exec", ns, sys.executable, "-m", "node", "start", "--data-dir", str(data_dir),
                "--listen", listen, "--name", name, "--config", str(self.root / "nat.toml")]
        args += ["--http", f"127.0.0.1:{http}"] if http else ["--no-http"]
        if not expert:
            args.append("--no-expert")
        log = self.root / f"{name}.log"
        process = subprocess.Popen([*args, *extra], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log.open("w"),
                                   text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = _read_line(process, timeout)
        match = LISTEN_LINE.match(line.strip())
        if match is None:
            process.kill()
            raise RuntimeError(f"{name} did not start ({line!r}); log tail:\n{log.read_text()[-3000:]}")
        proc = Proc(name, ns, match.group(1), match.group(2), process, log, http)
        self.procs[name] = proc
        return proc

    def run_in(self, ns: str, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=REPO_ROOT)

    def get(self, name: str, path: str) -> str:
        """GET ``path`` from the node's HTTP API (on loopback inside its namespace)."""
        proc = self.procs[name]
        script = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
        out = self.run_in(proc.ns, sys.executable, "-S", "-c", script, f"http://127.0.0.1:{proc.http}{path}",
                          timeout=30)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    def status(self, name: str) -> dict[str, Any]:
        return json.loads(self.get(name, "/status"))

    def query(self, name: str, question: str = "Say hi") -> dict[str, Any]:
        proc = self.procs[name]
        out = self.run_in(proc.ns, sys.executable, "-m", "node", "query", "--peer",
                          f"/ip4/127.0.0.1/tcp/{proc.addr.split('/tcp/')[1].split('/')[0]}/p2p/{proc.peer_id}",
                          "--json", "--max-tokens", "6",
                          "--temperature", "0", "--timeout", "90", question, timeout=120)
        assert out.returncode == 0, f"query from {name} failed: {out.stdout[-500:]} {out.stderr[-1500:]}"
        return json.loads(out.stdout)

    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(2.0)
        logs = "\n".join(f"--- {p.name}\n{p.log.read_text()[-1500:]}" for p in self.procs.values())
        raise AssertionError(f"timed out waiting for {what}\n{logs}")


def steps_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    trace = result.get("trace") or {}
    return list(trace.get("steps") or [])


def peer_entry(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((p for p in status["peers"] if p["name"] == name), None)


def connection_to(status: dict[str, Any], peer_id: str) -> dict[str, Any] | None:
    return next((c for c in status["nat"]["connections"] if c["peer"] == peer_id), None)


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    topo = topology.build({"A": "cone", "B": "cone", "C": "symmetric"})
    root = Path(tempfile.mkdtemp(prefix="mosaic-nat-"))
    (root / "nat.toml").write_text(CONFIG)
    world = Net(topo, root)
    try:
        relay1 = world.start("relay1", topo.pub, 0, f"/ip4/{topology.PUBLIC_IP}/tcp/4001", "--relay-service",
                             "--reachability", "public", http=HTTP_PORT)
        relay2 = world.start("relay2", topo.pub, 1, f"/ip4/{topology.PUBLIC_EXTRA_IPS[0]}/tcp/4001",
                             "--relay-service", "--reachability", "public", "--bootstrap", relay1.addr,
                             http=HTTP_PORT + 1)
        boot = ["--bootstrap", relay1.addr, "--bootstrap", relay2.addr]
        world.start("expert", topo.homes["A"].ns, 2, "/ip4/0.0.0.0/tcp/4001", *boot, expert=True,
                    http=HTTP_PORT, timeout=300)
        world.start("coordB", topo.homes["B"].ns, 3, "/ip4/0.0.0.0/tcp/4001", *boot, http=HTTP_PORT)
        world.start("coordC", topo.homes["C"].ns, 4, "/ip4/0.0.0.0/tcp/4001", *boot, http=HTTP_PORT)
        yield world
    finally:
        for proc in world.procs.values():
            if proc.process.poll() is None:
                proc.process.kill()
            proc.process.wait(timeout=10)
        topo.teardown()
        shutil.rmtree(root, ignore_errors=True)
        assert not topology.leftover_namespaces(topo.prefix)


def test_nat_reachability_and_circuit_addresses_in_records(net: Net) -> None:
    relay1 = net.procs["relay1"]

    def expert_advertises_circuit() -> bool:
        status = net.status("expert")
        return status["reachability"] == "private" and any(
            "/p2p-circuit/" in a for a in status["nat"]["circuit_addrs"])

    net.wait("the expert to find itself private and reserve on a relay", expert_advertises_circuit, 60)
    for name in ("coordB", "coordC"):
        net.wait(f"{name} to learn the expert's record with its circuit address",
                 lambda name=name: any("/p2p-circuit/" in a for a in
                                       (peer_entry(net.status(name), "expert") or {}).get("multiaddrs", [])), 60)
    # coordB runs AutoNAT on its own schedule: wait for its verdict too (not only the expert's).
    net.wait("coordB to find itself private", lambda: net.status("coordB")["reachability"] == "private", 60)
    status = net.status("coordB")
    relay_entry = peer_entry(status, "relay1")
    assert relay_entry is not None and relay_entry["reachability"] == "public" and relay_entry["relay_service"]
    expert = peer_entry(status, "expert")
    assert expert is not None and expert["reachability"] == "private"
    # The dashboard's state and /metrics say the same.
    state = json.loads(net.get("expert", "/v1/dashboard/state"))
    assert state["node"]["reachability"] == "private" and state["node"]["nat"]["reservations"]["relays"]
    assert 'mosaic_reachability{state="private"} 1.0' in net.get("expert", "/metrics")
    assert "mosaic_relay_service_reservations" in net.get("relay1", "/metrics")
    circuit = next(a for a in expert["multiaddrs"] if "/p2p-circuit/" in a)
    assert circuit.endswith(f"/p2p-circuit/p2p/{net.procs['expert'].peer_id}")
    assert relay1.peer_id in circuit or net.procs["relay2"].peer_id in circuit


def test_nat_expert_answers_through_relay_then_holepunch_makes_it_direct(net: Net) -> None:
    expert = net.procs["expert"]
    result = net.query("coordB")
    assert result.get("text") or result.get("answer") or steps_of(result)
    steps = steps_of(result)
    assert steps and steps[0]["peer"] == expert.peer_id and steps[0]["status"] == "ok"
    assert steps[0]["path"] in ("relayed", "direct")

    def direct_to_expert() -> bool:
        conn = connection_to(net.status("coordB"), expert.peer_id)
        return conn is not None and any("/p2p-circuit" not in a for a in conn["addrs"])

    net.wait("DCUtR to upgrade coordB's relayed connection to a direct one", direct_to_expert, 60)
    conn = connection_to(net.status("coordB"), expert.peer_id)
    assert conn is not None
    direct = [a for a in conn["addrs"] if "/p2p-circuit" not in a]
    # The hole punched through both cone NATs: the expert's router WAN address, its listen port.
    assert direct and direct[0].startswith(f"/ip4/{net.topo.homes['A'].wan_ip}/tcp/4001")
    again = steps_of(net.query("coordB"))
    assert again[0]["status"] == "ok" and again[0]["path"] == "direct"


def test_nat_symmetric_holepunch_fails_and_query_stays_relayed(net: Net) -> None:
    expert = net.procs["expert"]
    steps = steps_of(net.query("coordC"))
    assert steps[0]["peer"] == expert.peer_id and steps[0]["status"] == "ok" and steps[0]["path"] == "relayed"
    time.sleep(8)  # DCUtR's auto-drive tries every 2 s: give it several rounds to fail
    conn = connection_to(net.status("coordC"), expert.peer_id)
    assert conn is not None and conn["addrs"] and all("/p2p-circuit" in a for a in conn["addrs"]), conn
    metrics = net.get("coordC", "/metrics")
    relayed = next(line for line in metrics.splitlines()
                   if line.startswith('mosaic_streams_opened_total{path="relayed"}'))
    assert float(relayed.split()[-1]) >= 1
    relays = [json.loads(net.get(name, "/status"))["nat"]["relay_service"] for name in ("relay1", "relay2")]
    assert sum(r["circuits_opened"] for r in relays) >= 1 and sum(r["bytes_relayed"] for r in relays) > 0


def test_relay_limits_refuse_an_abuser(net: Net) -> None:
    relay2, expert = net.procs["relay2"], net.procs["expert"]
    out = net.run_in(net.topo.homes["C"].ns, sys.executable, "-m", "tests.nat.abuser", relay2.addr,
                     expert.peer_id, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # reservations_per_ip = 2 for everything behind C's router (coordC may hold one of them).
    assert result["granted"] <= 2 and len(result["refused"]) >= 4
    assert all("limits are reached" in why for why in result["refused"]), result["refused"]
    # A circuit to a peer without a reservation on the relay is refused with the reason.
    assert "no reservation" in result["unreserved"], result["unreserved"]
    # circuits_per_peer = 3 concurrent circuits from one peer: the rest of the flood is refused.
    assert result["flood_refused"], result
    status = net.status("expert")  # the expert kept serving
    assert status["reachability"] == "private"


def test_relay_dies_expert_reserves_on_second_relay_and_stays_reachable(net: Net) -> None:
    expert = net.procs["expert"]
    held = net.status("expert")["nat"]["reservations"]["relays"]
    assert len(held) == 1
    dead = next(p for p in (net.procs["relay1"], net.procs["relay2"]) if p.peer_id == held[0]["relay"])
    survivor = next(p for p in (net.procs["relay1"], net.procs["relay2"]) if p is not dead)
    dead.process.kill()
    dead.process.wait(timeout=10)

    def moved() -> bool:
        relays = net.status("expert")["nat"]["reservations"]["relays"]
        return [r["relay"] for r in relays] == [survivor.peer_id]

    net.wait("the expert to reserve on the surviving relay", moved, 60)
    net.wait("coordC to learn the expert's new circuit address",
             lambda: any(survivor.peer_id in a and "/p2p-circuit/" in a for a in
                         (peer_entry(net.status("coordC"), "expert") or {}).get("multiaddrs", [])), 60)
    steps = steps_of(net.query("coordC"))
    assert steps[0]["peer"] == expert.peer_id and steps[0]["status"] == "ok" and steps[0]["path"] == "relayed"
    conn = connection_to(net.status("coordC"), expert.peer_id)
    assert conn is not None and any(survivor.peer_id in a for a in conn["addrs"]), conn
