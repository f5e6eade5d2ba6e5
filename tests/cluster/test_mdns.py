"""`python -m node start --mdns`: nodes with no `--bootstrap` find each other by mDNS.

mDNS multicasts on every interface, so this test never runs it in the host's network:
every node process runs inside a fresh network namespace that the test creates and
that has only a loopback interface (multicast switched on, 224.0.0.0/4 routed to lo).
The namespace is deleted in a finally, after its processes are killed.  Without root
or iproute2 the test is skipped.

Measured here (py-libp2p 0.8.1, zeroconf on lo inside the namespace): the TXT record
advertises `/ip4/127.0.0.1/tcp/<port>`, and the second node was connected about 10 ms
after it printed its address; no change to node/net was needed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .harness import (
    LISTEN_LINE,
    REPO_ROOT,
    _read_line,
    fixed_identity,
    prepare_data_dir,
)

pytestmark = pytest.mark.multiprocess

DISCOVERY_DEADLINE = 20.0  # measured: ~0.01-2 s; the margin is for 2 shared cores


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh loopback-only network namespace with multicast on lo; deleted afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed: cannot create a network namespace for mDNS")
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root: mDNS is only ever run inside one")
    name = f"mosaic-mdns-{secrets.token_hex(4)}"
    added = _ip("netns", "add", name)
    if added.returncode != 0:
        pytest.skip(f"`ip netns add` failed, so mDNS cannot be isolated: {added.stderr.strip()}")
    try:
        for step in (["link", "set", "lo", "up"], ["link", "set", "lo", "multicast", "on"],
                     ["route", "add", "224.0.0.0/4", "dev", "lo"]):
            done = _ip("netns", "exec", name, "ip", *step)
            assert done.returncode == 0, f"ip {' '.join(step)} in {name}: {done.stderr}"
        links = _ip("netns", "exec", name, "ip", "-o", "link").stdout.splitlines()
        assert len(links) == 1 and ": lo:" in links[0], links  # nothing leaves this namespace
        yield name
    finally:
        _ip("netns", "del", name)


class NsNode:
    def __init__(self, index: int, peer_id: str, multiaddr: str, process: subprocess.Popen[str]) -> None:
        self.index, self.peer_id, self.multiaddr, self.process = index, peer_id, multiaddr, process


def _start(ns: str, root: Path, index: int, *, mdns: bool) -> NsNode:
    """`python -m node start` for test node ``index`` inside ``ns``; no --bootstrap, ever."""
    data_dir = prepare_data_dir(root, index)
    args = ["ip", "netns", "exec", ns, sys.executable, "-m", "node", "start", "--no-expert", "--no-http",
            "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(data_dir), "--name", f"node-{index}"]
    if mdns:
        args.append("--mdns")
    log = root / f"node-{index}.log"
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    line = _read_line(process, 30.0)
    match = LISTEN_LINE.match(line.strip())
    if match is None:
        process.kill()
        process.wait()
        raise RuntimeError(f"node {index} did not print its address (got {line!r}):\n{log.read_text()[-3000:]}")
    assert match.group(1) == fixed_identity(index).peer_id
    return NsNode(index, match.group(1), match.group(2), process)


def _names(ns: str, node: NsNode) -> set[str]:
    """Names in ``node``'s capability table, read with `python -m node peers` inside ``ns``."""
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "node", "peers", "--timeout", "5",
                          "--connect", node.multiaddr, "--json"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return {row["name"] for row in json.loads(out.stdout)}


def _stop(nodes: Sequence[NsNode]) -> None:
    for node in nodes:
        if node.process.poll() is None:
            node.process.kill()
    for node in nodes:
        node.process.wait(timeout=10)


@pytest.mark.timeout(60)
def test_mdns_nodes_find_each_other_without_bootstrap(netns: str, tmp_path: Path) -> None:
    nodes: list[NsNode] = []
    try:
        # The node without --mdns starts first, so it has the whole run to be (wrongly) found.
        plain = _start(netns, tmp_path, 3, mdns=False)
        nodes.append(plain)
        started = time.monotonic()
        mdns_nodes = [_start(netns, tmp_path, i, mdns=True) for i in range(3)]
        nodes += mdns_nodes
        all_up = time.monotonic()
        want = {"node-0", "node-1", "node-2"}
        pending = list(mdns_nodes)
        while pending:
            pending = [n for n in pending if _names(netns, n) != want]
            if pending:
                assert time.monotonic() - all_up < DISCOVERY_DEADLINE, \
                    f"not discovered within {DISCOVERY_DEADLINE} s: {[(n.index, _names(netns, n)) for n in pending]}"
                time.sleep(0.2)  # polling other processes: no event crosses the boundary
        elapsed = time.monotonic() - all_up
        print(f"mDNS: all 3 tables complete {elapsed:.2f} s after the last node started")
        # Same loopback, same namespace, but no --mdns: nobody finds it and it finds nobody.
        assert time.monotonic() - started > 1.0
        assert _names(netns, plain) == {"node-3"}
        for node in mdns_nodes:
            assert "node-3" not in _names(netns, node)
        for node in nodes:
            assert node.process.poll() is None, (tmp_path / f"node-{node.index}.log").read_text()[-3000:]
    finally:
        _stop(nodes)
