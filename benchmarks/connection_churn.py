"""Connection churn at full size (issue 22, attack 1): a node still accepts connections after 10,000 closed ones.

A real node runs as its own process (``python -m node start --no-expert``);
fresh identities connect to it and hang up, ``--parallel`` at a time, until
``--connections`` have come and gone (py-libp2p 0.8.1 alone locks out for good
after 250: node/net/inbound_slots.py).  Printed: connections per second, refused
ones, the node's RSS, open file descriptors and threads before / after, and
whether a newcomer then connects and is answered (its record table, seconds).
CI runs 300 (tests/attacks/test_connection_churn.py).

Usage: .venv/bin/python benchmarks/connection_churn.py [--connections 10000] [--parallel 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from node.net.discovery import dial
from node.net.exchange import fetch_table
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from protocol import Identity
from tests.attacks.adversary import LOOPBACK, churn
from tests.cluster.harness import start_process


def process_usage(pid: int) -> tuple[float, int, int]:
    """RSS (MiB), open file descriptors and threads of process ``pid``."""
    with open(f"/proc/{pid}/statm") as fh:
        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return rss, fds, threads


async def newcomer_served(addr: str, peer_id: str) -> tuple[bool, float]:
    """Can a fresh identity connect and fetch the node's record table? (and in how many seconds)"""
    started = time.monotonic()
    host = build_host(libp2p_key_pair(Identity.generate()), LOOPBACK)
    try:
        async with host.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
            await dial(host, addr)
            table = await fetch_table(host, peer_id, None)
            return bool(table), time.monotonic() - started
    except Exception as exc:
        print(f"  newcomer refused: {type(exc).__name__}: {exc}")
        return False, time.monotonic() - started


async def run(args: argparse.Namespace, addr: str, peer_id: str, pid: int) -> None:
    print(f"{'churned':>8} {'refused':>8} {'conn/s':>7} {'RSS MiB':>8} {'fds':>5} {'threads':>7}")
    rss, fds, threads = process_usage(pid)
    print(f"{0:>8} {0:>8} {'':>7} {rss:>8.1f} {fds:>5} {threads:>7}")
    started = time.monotonic()
    done = refused = 0
    while done < args.connections:
        step = min(args.report_every, args.connections - done)
        refused += await churn(addr, step, parallel=args.parallel)
        done += step
        rss, fds, threads = process_usage(pid)
        rate = done / (time.monotonic() - started)
        print(f"{done:>8} {refused:>8} {rate:>7.1f} {rss:>8.1f} {fds:>5} {threads:>7}", flush=True)
    await trio.sleep(2.0)  # the last connections' cleanup
    rss, fds, threads = process_usage(pid)
    served, seconds = await newcomer_served(addr, peer_id)
    print(f"\nafter {done} churned connections ({refused} refused, {done / (time.monotonic() - started):.1f}/s): "
          f"RSS {rss:.1f} MiB, {fds} fds, {threads} threads; a newcomer {'is' if served else 'is NOT'} "
          f"served ({seconds:.2f} s)")
    if not served:  # failed dials of the churning clients alone are load, not a lockout
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=16, help="connections open at once (under the per-IP cap)")
    parser.add_argument("--report-every", type=int, default=1000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # py-libp2p logs every hang-up at ERROR
    with tempfile.TemporaryDirectory(prefix="mosaic-churn-") as tmp:
        node = start_process(Path(tmp), 0)
        try:
            time.sleep(2.0)  # let the node settle before the baseline
            trio.run(run, args, node.multiaddr, node.peer_id, node.process.pid)
        finally:
            node.stop()


if __name__ == "__main__":
    main()
