"""Three nodes as separate OS processes started with `python -m node start`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import trio

from node.net.discovery import dial
from node.net.exchange import fetch_table
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from node.registry import Registry
from protocol import Identity

from .harness import REPO_ROOT, fixed_identity, process_cluster, start_process

pytestmark = pytest.mark.multiprocess

TTL = 3.0
CONFIG = f"""
# Written by the test: exercises the TOML path; flags still override name/listen/tags.
description = "multi-process test node"

[net]
record_ttl = {TTL}
announce_interval = 1.0
dht_republish_interval = 1.0
dht_sync_interval = 1.0
"""


async def _tables(client, procs) -> dict[str, set[str]]:
    """Each process's table as seen over /mosaic/record/1 (verified records only)."""
    out = {}
    for proc in procs:
        registry = Registry()
        try:
            for signed in await fetch_table(client, proc.peer_id, None, timeout=2.0):
                registry.offer(signed, source="stream")
        except Exception:  # a node still starting or just stopped: empty table this round
            pass
        out[proc.peer_id] = registry.peer_ids()
    return out


async def _client_host(procs):
    listen = ["/ip4/127.0.0.1/tcp/0"]
    host = build_host(libp2p_key_pair(Identity.generate()), listen)
    return host, listen


@pytest.mark.timeout(90)
async def test_three_processes_discover_each_other_and_expire_a_stopped_one() -> None:
    with process_cluster(3, config_text=CONFIG) as (root, procs):
        all_started = time.monotonic()
        assert [p.peer_id for p in procs] == [fixed_identity(i).peer_id for i in range(3)]
        ids = {p.peer_id for p in procs}
        host, listen = await _client_host(procs)
        async with host.run(listen_addrs=listen_multiaddrs(listen)):
            with trio.fail_after(10):
                for proc in procs:
                    await dial(host, proc.multiaddr)
            # Every node lists all three within 3 s of the last one printing its address.
            with trio.fail_after(3.0):
                while any(t != ids for t in (await _tables(host, procs)).values()):
                    await trio.sleep(0.1)  # polling another process: no event crosses the boundary
            assert time.monotonic() - all_started < 3.0

            leaver = procs[2]
            leaver.process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(lambda: leaver.process.wait(10)) == 0  # clean shutdown
            stopped = time.monotonic()
            with trio.fail_after(TTL + 3.0):
                while True:
                    tables = await _tables(host, procs[:2])
                    if all(t == ids - {leaver.peer_id} for t in tables.values()):
                        break
                    await trio.sleep(0.1)
            assert time.monotonic() - stopped <= TTL + 2.0
        log = (root / "node-2.log").read_text()
        assert "event=shutdown signal=SIGTERM" in log and "event=stopped" in log


@pytest.mark.timeout(90)
def test_peers_command_prints_the_capability_table(tmp_path) -> None:
    first = start_process(tmp_path, 0, config_text=CONFIG)
    second = start_process(tmp_path, 1, bootstrap=[first.multiaddr], config_text=CONFIG)
    try:
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run([sys.executable, "-m", "node", "peers", "--connect", first.multiaddr, "--json"],
                                 cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)
            if len(rows) == 2 or time.monotonic() > deadline:
                break
        assert {r["name"] for r in rows} == {"node-0", "node-1"}
        assert {r["peer_id"] for r in rows} == {first.peer_id, second.peer_id}
        assert all(r["description"] == "multi-process test node" and r["ttl"] == TTL for r in rows)
        table = subprocess.run([sys.executable, "-m", "node", "peers", "--connect", second.multiaddr],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        assert table.returncode == 0, table.stderr
        assert "node-0" in table.stdout and "node-1" in table.stdout and "2 peer(s)" in table.stdout
        # A malformed or unreachable address is a clear error, not a traceback.
        bad = subprocess.run([sys.executable, "-m", "node", "peers", "--connect", "/ip4/127.0.0.1/tcp/1"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "/p2p/" in bad.stderr and "Traceback" not in bad.stderr
        gone = subprocess.run([sys.executable, "-m", "node", "peers", "--timeout", "3", "--connect",
                               f"/ip4/127.0.0.1/tcp/1/p2p/{fixed_identity(7).peer_id}"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        assert gone.returncode == 3 and "error:" in gone.stderr and "Traceback" not in gone.stderr
    finally:
        for proc in (first, second):
            assert proc.stop() == 0


def test_start_rejects_a_bad_config_key(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[net]\nrecord_ttl = -1\n")
    out = subprocess.run([sys.executable, "-m", "node", "start", "--config", str(path), "--data-dir", str(tmp_path / "d")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "net.record_ttl" in out.stderr and "Traceback" not in out.stderr


def test_start_refuses_pickled_weights_with_a_clear_error(tmp_path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "pytorch_model.bin").write_bytes(b"not loaded: pickle can execute code")
    out = subprocess.run([sys.executable, "-m", "node", "start", "--model", str(model), "--no-http",
                          "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(tmp_path / "d")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "pickle" in out.stderr and "safetensors" in out.stderr
    assert "Traceback" not in out.stderr and "ExceptionGroup" not in out.stderr
