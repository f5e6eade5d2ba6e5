"""Fetch a 100 MiB weights file from 1 and from 3 providers on localhost.

Prints, measured in one run: MiB/s for each case and their ratio, bytes the
providers sent versus the file size, and the fetching process's peak RSS growth.
Targets (issue #5): >= 40 MiB/s from one provider, >= 1.6x that from three, RSS
growth <= 64 MiB.

Two rounds: providers with no upload cap (on a 2-core machine one provider plus the
fetcher already use both cores, so this round is CPU-bound and more providers
cannot help), then providers capped at ``--uplink`` MiB/s each with the node's own
``storage.upload_limit_mib`` (a home uplink: the provider-bound case that
multi-provider fetching exists for).

Every provider and the fetcher are separate OS processes (bare libp2p hosts:
TCP + Noise + yamux via node.net.host, our /mosaic/blocks/1 server and client), so
they do not share one Python interpreter's CPU; each process prints one JSON line.

    .venv/bin/python benchmarks/weights.py [--mib 100] [--providers 3] [--uplink 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _host():
    from node.net.host import build_host
    from node.net.keys import libp2p_key_pair
    from protocol import Identity

    identity = Identity.generate()
    return identity, build_host(libp2p_key_pair(identity), ["/ip4/127.0.0.1/tcp/0"])


# ------------------------------------------------------------------ provider process


async def _serve(store_dir: str, upload_limit_mib: float | None) -> None:
    import trio
    from multiaddr import Multiaddr

    from node.storage.blocks_protocol import BlockServer
    from node.storage.blockstore import BlockStore
    from node.storage.upload_limit import UploadLimiter

    identity, host = _host()
    rate = upload_limit_mib * 2**20 if upload_limit_mib else None
    server = BlockServer(BlockStore(store_dir), upload_limit=UploadLimiter(rate))
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        server.register(host)
        addr = f"{host.get_addrs()[0]}"
        if "/p2p/" not in addr:
            addr += f"/p2p/{identity.peer_id}"
        print(json.dumps({"multiaddr": addr}), flush=True)
        # One stdin line ("stats") -> the counters; EOF -> exit.
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            print(json.dumps({"bytes_served": server.stats.bytes_served, "blocks": server.stats.blocks_served}), flush=True)
            del line


# ------------------------------------------------------------------ fetcher process


async def _fetch(cid_text: str, store_dir: str, addrs: list[str]) -> None:
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    from node.storage.blockstore import BlockStore
    from node.storage.fetch import fetch_dag
    from protocol.cid import parse_cid

    _, host = _host()
    store = BlockStore(store_dir)
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        peers = []
        for addr in addrs:
            info = info_from_p2p_addr(Multiaddr(addr))
            await host.connect(info)
            peers.append(str(info.peer_id))
        rss_before = _rss_mib()
        started, cpu_started = time.perf_counter(), time.process_time()
        stats = await fetch_dag(host, store, parse_cid(cid_text), peers)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        print(json.dumps({
            "seconds": seconds, "bytes": stats.bytes_fetched, "rss_before_mib": rss_before,
            "rss_peak_mib": _rss_mib(), "fetcher_cpu_cores": cpu / seconds, "by_peer": dict(stats.bytes_by_peer),
        }), flush=True)


# ------------------------------------------------------------------ driver


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _served(providers: list[tuple[subprocess.Popen[str], str]]) -> int:
    total = 0
    for proc, _ in providers:
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        total += json.loads(proc.stdout.readline())["bytes_served"]
    return total


def _case(cid: str, providers: list[tuple[subprocess.Popen[str], str]], work: Path, file_size: int) -> dict:
    import shutil

    store = work / "fetcher-store"
    shutil.rmtree(store, ignore_errors=True)
    fetcher = _spawn("--fetch", cid, str(store), *[addr for _, addr in providers])
    before = _served(providers)
    out, _ = fetcher.communicate(timeout=600)
    result = json.loads(out.strip().splitlines()[-1])
    sent = _served(providers) - before
    result["mib_s"] = result["bytes"] / 2**20 / result["seconds"]
    result["sent_over_size"] = sent / file_size
    result["rss_growth_mib"] = result["rss_peak_mib"] - result["rss_before_mib"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--providers", type=int, default=3)
    parser.add_argument("--uplink", type=float, default=20.0, metavar="MIB_S",
                        help="per-provider upload cap for the second round (a home uplink; 0 skips it)")
    parser.add_argument("--serve", metavar="STORE")
    parser.add_argument("--upload-limit", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--fetch", nargs="+", metavar=("CID", "STORE"))
    args = parser.parse_args()
    import trio

    if args.serve:
        if os.environ.get("MOSAIC_BENCH_PROFILE_SERVE"):  # provider profile written to this file
            import cProfile

            with cProfile.Profile() as prof:
                try:
                    trio.run(_serve, args.serve, args.upload_limit)
                finally:
                    prof.dump_stats(os.environ["MOSAIC_BENCH_PROFILE_SERVE"])
            return
        trio.run(_serve, args.serve, args.upload_limit)
        return
    if args.fetch:
        if os.environ.get("MOSAIC_BENCH_PROFILE"):  # where the fetcher's CPU goes, on stderr
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                trio.run(_fetch, args.fetch[0], args.fetch[1], args.fetch[2:])
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
            return
        trio.run(_fetch, args.fetch[0], args.fetch[1], args.fetch[2:])
        return

    from node.storage.blockstore import BlockStore
    from node.storage.importer import import_path

    with tempfile.TemporaryDirectory(prefix="mosaic-bench-") as tmp:
        work = Path(tmp)
        size = args.mib * 2**20
        with open(work / "weights.safetensors", "wb") as fh:
            for _ in range(args.mib):
                fh.write(os.urandom(2**20))
        entry = import_path(BlockStore(work / "provider-store"), work / "weights.safetensors")
        cid = str(entry.cid)
        rounds = [("unlimited providers (localhost: CPU-bound)", 0.0)]
        if args.uplink:
            rounds.append((f"providers capped at {args.uplink:g} MiB/s upload each (provider-bound)", args.uplink))
        results = [(title, *_round(cid, work, size, args.providers, limit)) for title, limit in rounds]
    print(f"file: {args.mib} MiB, CID {cid}, {os.cpu_count()} CPU cores")
    for title, one, many in results:
        print(f"-- {title}")
        for label, r in (("1 provider ", one), (f"{args.providers} providers", many)):
            shares = ", ".join(f"{b / 2**20:.0f}" for b in r["by_peer"].values())
            print(f"{label}: {r['mib_s']:6.1f} MiB/s ({r['seconds']:.2f} s)  sent/size {r['sent_over_size']:.3f}"
                  f"  RSS growth {r['rss_growth_mib']:.0f} MiB  fetcher CPU {r['fetcher_cpu_cores']:.2f} cores"
                  f"  MiB per provider [{shares}]")
        print(f"ratio {args.providers}/1 providers: {many['mib_s'] / one['mib_s']:.2f}x (target >= 1.6x)")
    print("targets: >= 40 MiB/s from one unlimited provider, RSS growth <= 64 MiB")


def _round(cid: str, work: Path, size: int, count: int, upload_limit: float) -> tuple[dict, dict]:
    """Fetch from 1, then from ``count`` provider processes with the given upload cap."""
    procs = []
    try:
        for _ in range(count):
            # Providers share one read-only store.
            proc = _spawn("--serve", str(work / "provider-store"), "--upload-limit", str(upload_limit))
            procs.append((proc, json.loads(proc.stdout.readline())["multiaddr"]))
        return _case(cid, procs[:1], work, size), _case(cid, procs, work, size)
    finally:
        for proc, _ in procs:
            proc.stdin.close()  # EOF: the provider exits on its own
        for proc, _ in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
