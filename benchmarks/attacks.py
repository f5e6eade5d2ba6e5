"""Attack suite, full size (issue 12): the Sybil flood and frame fuzzing against real nodes.

CI runs the same attacks small (tests/attacks/: 600 records, 500 frames per
protocol); this script runs them at the size the issue measured and prints one
table per attack:

* flood - an adversary gossips N expert records signed by N fresh keys at a
          coordinator and at an expert's node.  Printed: records stored vs sent,
          refused by reason, records the victim vouches for (verified), the
          registry's encoded size, and each node's query answered by the real
          expert (seconds).
* fuzz  - M mutated frames per stream protocol (infer, query, record, blocks)
          from 16 fresh identities.  Printed: answered / closed / silent (hangs)
          per protocol, seconds, RSS growth, an honest client's query latency
          during each protocol's fuzz, and whether it is still answered afterwards.

Usage: .venv/bin/python benchmarks/attacks.py [--flood 20000] [--fuzz 10000] [--protocols /mosaic/query/1 ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from tests.attacks.adversary import adversary, sybil_records
from tests.attacks.test_fuzz_frames import run_fuzz
from tests.cluster.harness import in_process_cluster


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def timed_query(host: object, peer_id: str) -> tuple[str, float]:
    request = p.QueryRequest(request_id=f"bench-{time.monotonic()}", prompt="Name a colour.", timeout_s=60.0,
                             sampling=p.SamplingParams(max_new_tokens=4), tags=("test",))
    started = time.monotonic()
    try:
        with trio.fail_after(60):
            async with aclosing(ask(host, peer_id, request)) as events:
                async for event in events:
                    if isinstance(event, p.QueryResult):
                        return event.provenance[0].served_by, time.monotonic() - started
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the table shows what failed
        return f"failed: {type(exc).__name__}: {exc}"[:80], time.monotonic() - started
    return "no result", time.monotonic() - started


async def flood(expert_model, count: int) -> None:
    started = time.monotonic()
    records = sybil_records(count)
    signed_s = time.monotonic() - started
    async with in_process_cluster() as cluster, adversary() as evil:
        expert = await cluster.add(0, services=[ExpertService(expert=expert_model, threads=1), QueryService()])
        coordinator = await cluster.add(1, services=[QueryService()])
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=30)
        for victim in (coordinator, expert):
            await evil.join_gossip(victim.full_multiaddrs()[0], victim.host.get_id())
        # Warm-up (MiniLM and the expert's first batch), so the timings below are the flood's.
        for label, node in (("coordinator", coordinator), ("expert", expert)):
            served_by, seconds = await timed_query(evil.host, node.peer_id)
            print(f"before the flood: query via {label:<12} answered by "
                  f"{'real expert' if served_by == expert.peer_id else served_by} in {seconds:.2f} s")
        rss0 = rss_mib()
        sent = time.monotonic()
        await evil.gossip(records)
        send_s = time.monotonic() - sent
        await trio.sleep(2.0)  # stragglers
        print(f"\nflood: {count} records signed in {signed_s:.1f} s, gossiped in {send_s:.1f} s; "
              f"RSS {rss_mib() - rss0:+.0f} MiB")
        print(f"{'node':<12} {'stored':>7} {'verified':>8} {'table KiB':>9}  refused")
        for label, node in (("coordinator", coordinator), ("expert", expert)):
            reg = node.registry
            table = sum(len(s.payload) + len(s.signature) for s in reg.signed_records()) / 1024
            refused = ", ".join(f"{k.split(':')[1]}={v}" for k, v in sorted(reg.rejected.items()) if ":" in k)
            print(f"{label:<12} {len(reg) - 2:>7} {len(reg.verified_records()):>8} {table:>9.0f}  {refused}")
        for label, node in (("coordinator", coordinator), ("expert", expert)):
            served_by, seconds = await timed_query(evil.host, node.peer_id)
            ok = "real expert" if served_by == expert.peer_id else served_by
            print(f"query via {label:<12} answered by {ok} in {seconds:.2f} s")


async def fuzz(expert_model, count: int, only: list[str]) -> None:
    def progress(protocol_id: str, report, seconds: float, honest) -> None:
        print(f"  {protocol_id}: {report.answered} answered, {report.closed} closed ({report.unopened} never "
              f"opened), {report.silent} silent "
              f"in {seconds:.0f} s; honest queries meanwhile: {honest_summary(honest)}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        reports = await run_fuzz(expert_model, count, Path(tmp), progress, only=only)
    honest = reports.pop("honest_after")
    growth = reports.pop("rss_growth_mib")
    print(f"\nfuzz: {count} mutated frames per protocol from 16 identities; victim process RSS +{growth:.0f} MiB "
          f"while fuzzing; honest query afterwards: "
          f"{'answered' if honest else 'FAILED'}")
    print(f"{'protocol':<18} {'answered':>8} {'closed':>7} {'unopened':>8} {'silent':>6} {'seconds':>8}  "
          "honest queries meanwhile")
    for protocol_id, (report, seconds, honest) in reports.items():
        print(f"{protocol_id:<18} {report.answered:>8} {report.closed:>7} {report.unopened:>8} {report.silent:>6} "
              f"{seconds:>8.1f}  {honest_summary(honest)}")


def honest_summary(honest: list[tuple[bool, float]]) -> str:
    """``answered/asked, median and max seconds`` of the honest client's queries during one fuzz."""
    times = sorted(seconds for ok, seconds in honest if ok)
    if not times:
        return f"0/{len(honest)} answered"
    return (f"{len(times)}/{len(honest)} answered, median {times[len(times) // 2]:.2f} s, "
            f"max {times[-1]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=20_000)
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--protocols", nargs="*", default=[],
                        help="fuzz only these protocol ids (default: all four)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from node.expert.model.loader import load_expert

    model = load_expert(None, device="cpu")
    print(f"attack suite on {os.cpu_count()} CPUs; resource limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} fds")

    async def run() -> None:
        if args.flood:
            await flood(model, args.flood)
        if args.fuzz:
            await fuzz(model, args.fuzz, args.protocols)

    trio.run(run)


if __name__ == "__main__":
    main()
