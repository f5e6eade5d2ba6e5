"""The first hour of a newcomer, measured (issue 11): model cache, Ctrl-C, goodbye, used ports.

In one run, on this machine:

* **model cache** -- three processes start at once on a cold per-user cache (what three
  local nodes did): how many conversions run and the wall time, against one cold start
  alone; then a warm start (what every later node pays).  Before, every data dir
  converted its own copy (three concurrent first starts: 3 conversions, 183 s measured
  on the issue's machine).
* **Ctrl-C during the model load** -- ``python -m node start`` on a cold cache, SIGINT
  as the conversion starts: seconds until the process has exited, against the cold load
  it interrupts (before: Ctrl-C waited for the whole load).
* **goodbye** -- a peer's table after a node stops: a clean stop (signed goodbye) against
  a crash-stop, both with a record TTL of ``--ttl`` seconds (before, a clean stop was
  a crash for the peers: listed for the whole TTL, 300 s by default).
* **used port** -- a second node on the port of a running node is refused, and every
  dial to that port reaches the first node (before: 3 dials in 8 failed).

    .venv/bin/python benchmarks/newcomer.py [--ttl 10] [--dials 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- model cache


def _start_like_a_node(cache_root: str, results) -> None:
    """What a node does at start: resolve the embedded model through the shared cache."""
    import torch

    torch.set_num_threads(1)
    from node.expert.model.loader import default_gguf_path
    from node.expert.model.model_cache import _convert, content_ids, ensure_entry

    gguf = default_gguf_path()
    digest, _ = content_ids(gguf)
    built = []

    def build(out: Path) -> None:
        built.append(1)
        _convert(gguf, out)

    started = time.perf_counter()
    ensure_entry(Path(cache_root), digest, build, source=gguf.name)
    results.put((len(built), time.perf_counter() - started))


def _starts(cache_root: Path, count: int) -> tuple[int, float, list[float]]:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_start_like_a_node, args=(str(cache_root), results)) for _ in range(count)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    got = [results.get() for _ in procs]
    return sum(b for b, _ in got), wall, [s for _, s in got]


def model_cache() -> float:
    with tempfile.TemporaryDirectory(prefix="mosaic-bench-cache-") as tmp:
        builds1, cold1, _ = _starts(Path(tmp) / "one", 1)
        builds3, cold3, each = _starts(Path(tmp) / "three", 3)
        _, warm, _ = _starts(Path(tmp) / "three", 1)
    print(f"model cache: 1 cold start: {builds1} conversion, {cold1:.1f} s")
    print(f"model cache: 3 concurrent cold starts: {builds3} conversion(s), {cold3:.1f} s wall "
          f"(each ready after {', '.join(f'{s:.1f}' for s in sorted(each))} s)")
    print(f"model cache: a later start on the warm cache: {warm:.2f} s")
    print(f"  ratio 3 concurrent / 1 cold = {cold3 / cold1:.2f} (3 separate conversions would be ~3x CPU); "
          f"warm / cold = {warm / cold1:.3f}")
    return cold1


# --------------------------------------------------------------------------- Ctrl-C


def ctrl_c(cold_load: float) -> None:
    with tempfile.TemporaryDirectory(prefix="mosaic-bench-ctrlc-") as tmp:
        log = Path(tmp) / "node.log"
        env = dict(os.environ, MOSAIC_CACHE_DIR=str(Path(tmp) / "cold"), PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-m", "node", "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-http",
                                 "--data-dir", str(Path(tmp) / "d")], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=log.open("w"), env=env)
        while "model_cache_build_start" not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit(f"node exited early: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(120)
        took = time.perf_counter() - sent
    print(f"Ctrl-C during the model load: exited {code} after {took:.2f} s "
          f"(the load it cut short: ~{cold_load:.0f} s); ratio {took / cold_load:.3f}")


# --------------------------------------------------------------------------- goodbye and ports


async def goodbye(ttl: float) -> None:
    import trio

    from tests.cluster.harness import in_process_cluster

    async with in_process_cluster(3, record_ttl=ttl, announce_interval=ttl / 4) as cluster:
        watcher, crashed, leaving = cluster.nodes
        await watcher.registry.wait_for(lambda r: len(r) == 3, timeout=30)
        cluster.stop(crashed)  # a crash: no goodbye
        t0 = trio.current_time()
        await watcher.registry.wait_for(lambda r: crashed.peer_id not in r, timeout=ttl + 30)
        crash_gone = trio.current_time() - t0
        leaving.stop()  # SIGINT/SIGTERM in `python -m node start`
        t0 = trio.current_time()
        await watcher.registry.wait_for(lambda r: leaving.peer_id not in r, timeout=ttl + 30)
        clean_gone = trio.current_time() - t0
    print(f"goodbye (record TTL {ttl:.0f} s): a crashed node left the peer's table after {crash_gone:.2f} s, "
          f"a cleanly stopped one after {clean_gone:.3f} s; ratio {clean_gone / crash_gone:.4f} "
          f"(with the default TTL of 300 s a crash stays listed up to 300 s)")


async def used_port(dials: int) -> None:
    import trio

    from node.app import Node
    from node.net.discovery import dial
    from node.net.host import build_host, listen_multiaddrs
    from node.net.keys import libp2p_key_pair
    from node.net.ports import PortInUse
    from protocol import Identity
    from tests.cluster.harness import in_process_cluster, node_config, prepare_data_dir

    async with in_process_cluster(1) as cluster:
        first = cluster.nodes[0]
        addr = first.full_multiaddrs()[0]
        port = int(addr.split("/tcp/")[1].split("/")[0])
        with tempfile.TemporaryDirectory() as tmp:
            config = node_config(prepare_data_dir(Path(tmp), 1), 1)
            config.net.listen = [f"/ip4/127.0.0.1/tcp/{port}"]
            try:
                await Node(config).run()
                refused = False
            except PortInUse:
                refused = True
        reached = 0
        for _ in range(dials):
            listen = ["/ip4/127.0.0.1/tcp/0"]
            host = build_host(libp2p_key_pair(Identity.generate()), listen)
            async with host.run(listen_addrs=listen_multiaddrs(listen)):
                try:
                    with trio.fail_after(10):
                        reached += await dial(host, addr) == first.peer_id
                except Exception:
                    pass
    print(f"used port: second node on port {port} refused: {refused}; "
          f"dials reaching the first node: {reached}/{dials} (issue: 5/8 when both listened)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttl", type=float, default=10.0, help="record TTL for the goodbye comparison")
    parser.add_argument("--dials", type=int, default=16)
    parser.add_argument("--skip-model", action="store_true", help="skip the model cache and Ctrl-C parts")
    args = parser.parse_args()
    import trio

    from node import logs

    logs.setup("error", libp2p_level="critical")
    if not args.skip_model:
        cold = model_cache()
        ctrl_c(cold)
    trio.run(goodbye, args.ttl)
    trio.run(used_port, args.dials)


if __name__ == "__main__":
    main()
