"""Local commands find the node of their data dir: `peers`/`status` need no address,
`publish`/`pin` go through the running node instead of a second host with its identity
(issue 11, items 6 and 12)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.harness import REPO_ROOT, start_process

pytestmark = [pytest.mark.timeout(150), pytest.mark.multiprocess]


def _node(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_peers_and_status_default_to_the_node_of_the_data_dir(tmp_path: Path) -> None:
    first = start_process(tmp_path, 0)
    second = start_process(tmp_path, 1, bootstrap=[first.multiaddr])
    try:
        deadline = time.monotonic() + 15
        while True:
            out = _node("peers", "--json", "--data-dir", str(second.data_dir))
            assert out.returncode == 0, out.stderr
            if len(json.loads(out.stdout)) == 2 or time.monotonic() > deadline:
                break
        assert {r["peer_id"] for r in json.loads(out.stdout)} == {first.peer_id, second.peer_id}

        table = _node("status", "--data-dir", str(first.data_dir))
        assert table.returncode == 0, table.stderr
        assert table.stdout.startswith(f"network as seen by {first.peer_id}: 2 peer(s), 0 expert(s)")
        assert "node-0" in table.stdout and "node-1" in table.stdout and "LOAD" in table.stdout
        machine = json.loads(_node("status", "--json", "--data-dir", str(first.data_dir)).stdout)
        assert machine["peer_id"] == first.peer_id and len(machine["peers"]) == 2
    finally:
        for proc in (first, second):
            assert proc.stop() == 0
    # No node runs there any more: one clear line and the documented exit code.
    for command in ("peers", "status"):
        out = _node(command, "--data-dir", str(first.data_dir))
        assert out.returncode == 3 and out.stderr.startswith("error: no node is running on data dir"), out.stderr
        assert "Traceback" not in out.stderr
    assert "exit codes" in _node("status", "--help").stdout


def test_publish_and_pin_on_a_running_nodes_data_dir_go_through_that_node(tmp_path: Path) -> None:
    node = start_process(tmp_path, 0)
    try:
        src = tmp_path / "adapter.bin"
        src.write_bytes(b"lora" * 100_000)
        # Without --offline: no second host with the node's identity; the node provides it and publish exits.
        out = _node("publish", str(src), "--data-dir", str(node.data_dir), timeout=30)
        assert out.returncode == 0, out.stderr[-2000:]
        cid = out.stdout.strip()
        assert f"the running node {node.peer_id}" in out.stderr and "provides" in out.stderr
        # --offline into the running node's data dir: provided now too (pins are no longer read once at start).
        other = tmp_path / "other.bin"
        other.write_bytes(b"more" * 100_000)
        offline = _node("publish", str(other), "--offline", "--data-dir", str(node.data_dir), timeout=30)
        assert offline.returncode == 0 and "provides" in offline.stderr, offline.stderr[-2000:]
        # Another process finds both through the DHT provider records alone (no --peer).
        for wanted, source in ((cid, src), (offline.stdout.strip(), other)):
            got = _node("fetch", wanted, "--bootstrap", node.multiaddr, "--no-progress",
                        "--data-dir", str(tmp_path / "client"), "-o", str(tmp_path / f"got-{source.name}"))
            assert got.returncode == 0, got.stderr[-2000:]
            assert (tmp_path / f"got-{source.name}").read_bytes() == source.read_bytes()
        # A second `start` on that data dir is refused (the lock), `pin` goes through the node.
        pin = _node("pin", cid, "--data-dir", str(node.data_dir))
        assert pin.returncode == 0 and "provides" in pin.stderr, pin.stderr
        assert node.process.poll() is None
    finally:
        assert node.stop() == 0
    log = (tmp_path / "node-0.log").read_text()
    assert log.count("event=control_request op=provide") == 3
