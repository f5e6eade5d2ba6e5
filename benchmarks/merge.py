"""The ``merge`` strategy's latency: a cold merge, a new merge of fetched inputs, a cached merge.

One run on loopback, in-process nodes (the test harness): node 0 serves two LoRA adapters of
SmolLM2-135M (trained here in a few CPU steps, like tests/training/fixtures.py, or given with
``--adapter NAME=DIR``); node 1 serves the same base and coordinates.  Timed, end to end as a
client sees them (``/mosaic/query/1``, greedy, ``--tokens`` tokens):

* ``cold``: fetch both adapters by CID, merge (TIES), publish, load, answer;
* ``new weights``: the inputs are local now; merge again with other weights, load, answer;
* ``cached``: the first query again: no fetch, no merge, no load (the cache hit);
* ``single adapter``: ``route`` pinned to one input adapter on node 0 (the plain generation).

    python benchmarks/merge.py [--repeats 3] [--tokens 8] [--adapter a=DIR --adapter b=DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTION = "What is the secret word number 99?"


def train_two(tmp: Path) -> dict[str, str]:
    from node.config import default_cache_dir
    from node.training import train_adapter
    from tests.training.fixtures import WORDS, tiny_job

    out = {}
    for name, word in WORDS.items():
        job = tiny_job(tmp, default_cache_dir(), name, word)
        train_adapter(job)
        out[name] = str(job.out_dir)
    return out


async def ask(host, peer: str, **fields) -> tuple[float, object]:
    import trio

    import protocol as p
    from node.coordinator.client import ask as query

    request = p.QueryRequest(request_id=f"bench-merge-{trio.current_time():.6f}", timeout_s=300.0,
                             messages=(p.ChatMessage(role="user", content=QUESTION),), **fields)
    began = time.monotonic()
    result = None
    async with aclosing(query(host, peer, request)) as events:
        async for event in events:
            if isinstance(event, p.QueryResult):
                result = event
    assert result is not None, "no result"
    return time.monotonic() - began, result


async def main(args: argparse.Namespace, adapters: dict[str, str]) -> None:
    import protocol as p
    from node.config import ExpertConfig
    from node.coordinator.service import QueryService
    from node.expert import ExpertService
    from node.net.discovery import dial
    from node.storage import BlockStore, StorageService
    from tests.cluster.harness import in_process_cluster
    from tests.cluster.test_query import client_host

    sampling = p.SamplingParams(max_new_tokens=args.tokens, temperature=0.0)
    async with in_process_cluster() as cluster:
        holder = ExpertService(ExpertConfig(adapters=adapters), threads=1)
        node0 = await cluster.add(0, services=[StorageService(BlockStore(cluster.root / "s0")), holder],
                                  record_ttl=60.0)
        own = ExpertService(ExpertConfig(), threads=1)
        node1 = await cluster.add(1, services=[StorageService(BlockStore(cluster.root / "s1")), own,
                                               QueryService()], record_ttl=60.0)
        await node1.registry.wait_for(
            lambda r: (rec := r.get(node0.peer_id)) is not None and len(rec.adapters) == len(adapters), timeout=120)
        record = node1.registry.get(node0.peer_id)
        cids = ",".join(a.cid for a in record.adapters)
        first = next(iter(adapters))
        async with client_host() as host:
            peer = await dial(host, node1.full_multiaddrs()[0])
            merge = {"adapters": cids, "method": "ties", "weights": "0.5,0.5"}
            cold, result = await ask(host, peer, strategy="merge", params=merge, sampling=sampling)
            step = next(s for s in result.trace.steps if s.call == "merge")
            fresh, _ = await ask(host, peer, strategy="merge", params={**merge, "weights": "0.7,0.3"},
                                 sampling=sampling)
            cached = [(await ask(host, peer, strategy="merge", params=merge, sampling=sampling))[0]
                      for _ in range(args.repeats)]
            single = [(await ask(host, peer, strategy="route", model=f"{record.name}/{first}",
                                 sampling=sampling))[0] for _ in range(args.repeats)]
    hit, plain = statistics.median(cached), statistics.median(single)
    print(f"merged {cids} -> {step.adapter_cid} ({step.seconds:.2f}s in the merge step); "
          f"answer {result.text!r}; {args.tokens} tokens, median of {args.repeats}")
    print(f"{'query':<16} {'seconds':>8} {'/ cached':>9} {'/ single':>9}")
    for name, value in (("cold", cold), ("new weights", fresh), ("cached", hit), ("single adapter", plain)):
        print(f"{name:<16} {value:>8.2f} {value / hit:>9.2f} {value / plain:>9.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                        help="an input adapter (two or more; default: two trained here in a few steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    import torch
    import trio

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        given = dict(a.split("=", 1) for a in args.adapter)
        trio.run(main, args, given if len(given) >= 2 else train_two(Path(tmp)))
