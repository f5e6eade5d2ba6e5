"""Coordination overhead: a routed query vs the same generation done locally.

Same model, same prompt, same tokens (greedy, 64 new tokens, checked identical), in one run:

* local: the expert's own inference worker, called in-process (``LocalExpert.generate``);
* routed: a bare client host -> coordinator node (no model) -> expert node over
  ``/mosaic/query/1`` and ``/mosaic/infer/1`` -> back to the client, streamed.

Both paths use the *same* worker of the expert node, so the difference is the
cost of coordination: two libp2p hops each way, routing, msgpack framing,
per-chunk forwarding.  Rounds alternate local / routed so that load from other
processes on the machine hits both alike; medians are reported.
Target: routed / local <= 1.10.

    .venv/bin/python benchmarks/overhead.py [--tokens 64] [--rounds 7] [--threads N] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import aclosing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "Write a long story about a robot who learns to paint, with many details."


async def local_run(expert_service, request) -> tuple[float, float, str, int]:
    import protocol as p

    started = time.perf_counter()
    first = None
    async with aclosing(expert_service.local.generate(request)) as stream:
        async for message in stream:
            if first is None:
                first = time.perf_counter() - started
            if isinstance(message, p.GenerateResult):
                return time.perf_counter() - started, first, message.text, message.usage.completion_tokens
    raise RuntimeError("no result")


async def routed_run(host, coordinator_id: str, query) -> tuple[float, float, str, int, str]:
    import protocol as p
    from node.coordinator.client import ask

    started = time.perf_counter()
    first = None
    async with aclosing(ask(host, coordinator_id, query)) as events:
        async for event in events:
            if first is None:
                first = time.perf_counter() - started
            if isinstance(event, p.QueryResult):
                return (time.perf_counter() - started, first, event.text, event.usage.completion_tokens,
                        event.provenance[0].served_by)
    raise RuntimeError("no result")


async def main(args: argparse.Namespace, expert) -> None:
    import protocol as p
    from node.coordinator.service import QueryService
    from node.expert.serve.service import ExpertService
    from node.net.discovery import dial
    from node.net.host import build_host, listen_multiaddrs
    from node.net.keys import libp2p_key_pair
    from tests.cluster.harness import in_process_cluster

    messages = (p.ChatMessage(role="user", content=PROMPT),)
    sampling = p.SamplingParams(max_new_tokens=args.tokens, temperature=0.0)
    async with in_process_cluster() as cluster:
        coordinator = await cluster.add(0, services=[QueryService()])
        expert_service = ExpertService(expert=expert, threads=args.threads)
        expert_node = await cluster.add(1, services=[expert_service])
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=15)

        listen = ["/ip4/127.0.0.1/tcp/0"]
        host = build_host(libp2p_key_pair(p.Identity.generate()), listen)
        async with host.run(listen_addrs=listen_multiaddrs(listen)):
            coordinator_id = await dial(host, coordinator.full_multiaddrs()[0])
            local_times, routed_times, local_first, routed_first = [], [], [], []
            reference = None
            for round_no in range(args.rounds + 1):  # round 0 warms up both paths
                request = p.GenerateRequest(request_id=f"local-{round_no}", messages=messages, sampling=sampling)
                query = p.QueryRequest(request_id=f"routed-{round_no}", messages=messages, sampling=sampling,
                                       timeout_s=600.0)
                order = ("local", "routed") if round_no % 2 == 0 else ("routed", "local")
                for which in order:
                    if which == "local":
                        seconds, first, text, tokens = await local_run(expert_service, request)
                        served_by = expert_node.peer_id
                    else:
                        seconds, first, text, tokens, served_by = await routed_run(host, coordinator_id, query)
                    if served_by != expert_node.peer_id:
                        raise SystemExit(f"routed answer came from {served_by}, not the expert node")
                    if tokens != args.tokens:
                        raise SystemExit(f"{which}: generated {tokens} tokens, not {args.tokens} (EOS?)")
                    reference = reference or text
                    if text != reference:
                        raise SystemExit(f"{which}: greedy output differs between runs")
                    if round_no == 0:
                        continue
                    (local_times if which == "local" else routed_times).append(seconds)
                    (local_first if which == "local" else routed_first).append(first)

    local_s = statistics.median(local_times)
    routed_s = statistics.median(routed_times)
    ratio = routed_s / local_s
    print(f"model {expert.model_id}, {args.tokens} new tokens, greedy, {args.rounds} interleaved rounds, "
          f"torch threads {args.threads or 'default'}")
    print(f"local  (in-process worker):            median {local_s * 1000:8.1f} ms  "
          f"(min {min(local_times) * 1000:.1f}, max {max(local_times) * 1000:.1f}); "
          f"first token {statistics.median(local_first) * 1000:.1f} ms")
    print(f"routed (client->coordinator->expert):  median {routed_s * 1000:8.1f} ms  "
          f"(min {min(routed_times) * 1000:.1f}, max {max(routed_times) * 1000:.1f}); "
          f"first token {statistics.median(routed_first) * 1000:.1f} ms")
    print(f"per-token: local {local_s / args.tokens * 1000:.2f} ms, routed {routed_s / args.tokens * 1000:.2f} ms")
    print(f"ratio routed/local = {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f}%; target <= +10%: "
          f"{'MET' if ratio <= 1.10 else 'NOT MET'})")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the expert's worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None, help="model cache root (default: the per-user cache, $MOSAIC_CACHE_DIR)")
    args = parser.parse_args()

    import logging

    import trio

    from node.expert.model.loader import load_expert

    logging.getLogger().setLevel(logging.ERROR)
    # Default: the per-user model cache ($MOSAIC_CACHE_DIR or the platform cache dir).
    cache = args.data_dir or os.environ.get("MOSAIC_TEST_DATA_DIR")
    expert = load_expert(None, cache_dir=cache, device=args.device)
    trio.run(main, args, expert)


if __name__ == "__main__":
    cli()
