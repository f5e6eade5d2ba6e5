"""Soak: N HTTP clients for M minutes against a 3-node loopback cluster, then a 64-request burst.

Three real ``python -m node start`` processes on 127.0.0.1: node 0 coordinates and
serves the OpenAI API (no model), nodes 1 and 2 serve the embedded SmolLM2.
Clients loop on ``/v1/chat/completions`` through node 0 (streamed and not,
one request in eight abandoned after its first bytes, to exercise
cancellation), each with a client-side deadline.  Printed, from one run:

* answered / failed / timed-out / abandoned counts, p50 / p95 latency of answered requests;
* RSS and open file descriptors of every node after warm-up and at the end, checked
  against a stated bound (RSS growth <= max(64 MiB, 10 %), fds growth <= 16);
* a burst of ``--burst`` (64) parallel requests pinned to one expert: all must be answered
  (the expert queues them; the coordinator waits on a live expert);
* stderr lines written by the nodes, and how many came from third-party loggers.

Exit status 1 when a bound is broken or the burst was not fully answered.

    .venv/bin/python benchmarks/soak.py [--clients 4] [--minutes 2] [--max-tokens 24] [--burst 64] [--threads 1]

The expert nodes share one converted model (``<data dir>/models`` is a link to
``--model-cache``), so only the first start converts it.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTEN = re.compile(r"^mosaic node (\S+) listening on (\S+)$")
PROMPTS = [
    "Name a primary colour.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity in one sentence.",
    "Count from 1 to 20.",
    "Give me three fruit names.",
]
RSS_BOUND_BYTES = 64 * 2**20
RSS_BOUND_RATIO = 0.10
FD_BOUND = 16
FD_SETTLED = 4  # waiting (up to 60 s) until every node is this close to its start count


@dataclass
class NodeProc:
    name: str
    process: subprocess.Popen[str]
    peer_id: str
    multiaddr: str
    log: Path


@dataclass
class Tally:
    answered: int = 0
    failed: int = 0
    timed_out: int = 0
    abandoned: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.failures[why] = self.failures.get(why, 0) + 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(root: Path, name: str, args: list[str], model_cache: Path | None, timeout: float) -> NodeProc:
    data_dir = root / name
    data_dir.mkdir(parents=True)
    if model_cache is not None:
        model_cache.mkdir(parents=True, exist_ok=True)
        (data_dir / "models").symlink_to(model_cache, target_is_directory=True)
    log = root / f"{name}.stderr"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "node", "start", "--data-dir", str(data_dir), "--name", name,
         "--listen", "/ip4/127.0.0.1/tcp/0", *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline and process.poll() is None:
        line = _readline(process, deadline - time.monotonic())
        if LISTEN.match(line.strip()):
            break
    match = LISTEN.match(line.strip())
    if match is None:
        process.kill()
        raise SystemExit(f"{name} did not start; stderr tail:\n{log.read_text()[-2000:]}")
    return NodeProc(name, process, match.group(1), match.group(2), log)


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(max(0.1, timeout))
    return out[0] if out else ""


def usage(pid: int) -> tuple[int, int]:
    """(RSS bytes, open file descriptors) of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def chat(prompt: str, tokens: int, *, stream: bool = False, model: str = "mosaic/route") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": stream}


async def one_request(http, rng: random.Random, args, tally: Tally, number: int) -> None:
    import json

    import httpx
    import trio

    stream = rng.random() < 0.5
    abandon = number % 8 == 3  # one in eight, hung up on after its first event
    body = chat(rng.choice(PROMPTS), rng.randint(4, args.max_tokens), stream=stream or abandon)
    started = time.perf_counter()
    try:
        with trio.fail_after(args.request_timeout):
            if stream or abandon:
                async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                    if reply.status_code != 200:
                        tally.fail(f"http {reply.status_code}")
                        return
                    done = False
                    async for line in reply.aiter_lines():
                        if abandon:
                            tally.abandoned += 1
                            return  # leaving the block closes the connection mid-stream
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: {") and "error" in json.loads(line[6:]):
                            tally.fail("in-stream error: " + json.loads(line[6:])["error"].get("code", "?"))
                            return
                    if not done:
                        tally.fail("stream ended without [DONE]")
                        return
            else:
                reply = await http.post("/v1/chat/completions", json=body)
                if reply.status_code != 200:
                    tally.fail(f"http {reply.status_code}")
                    return
                if reply.json()["choices"][0]["message"]["role"] != "assistant":
                    tally.fail("malformed answer")
                    return
    except trio.TooSlowError:
        tally.timed_out += 1
        return
    except httpx.HTTPError as exc:
        tally.fail(type(exc).__name__)
        return
    tally.answered += 1
    tally.latencies.append(time.perf_counter() - started)


async def soak(url: str, args) -> Tally:
    import httpx
    import trio

    tally = Tally()
    end = time.monotonic() + args.minutes * 60

    async def client(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=url, timeout=args.request_timeout + 5) as http:
            number = 0
            while time.monotonic() < end:
                await one_request(http, rng, args, tally, number)
                number += 1

    async with trio.open_nursery() as nursery:
        for i in range(args.clients):
            nursery.start_soon(client, i)
    return tally


async def burst(url: str, expert_name: str, args) -> Tally:
    import httpx
    import trio

    tally = Tally()
    limits = httpx.Limits(max_connections=args.burst + 8, max_keepalive_connections=args.burst + 8)

    async def one(http, i: int) -> None:
        started = time.perf_counter()
        try:
            with trio.fail_after(args.request_timeout * 4):
                reply = await http.post("/v1/chat/completions",
                                        json=chat(PROMPTS[i % len(PROMPTS)], args.burst_tokens, model=expert_name))
        except trio.TooSlowError:
            tally.timed_out += 1
            return
        except httpx.HTTPError as exc:
            tally.fail(type(exc).__name__)
            return
        if reply.status_code != 200:
            tally.fail(f"http {reply.status_code}")
            return
        if reply.headers.get("x-mosaic-expert") != expert_name:
            tally.fail("served by another expert")
            return
        tally.answered += 1
        tally.latencies.append(time.perf_counter() - started)

    client = httpx.AsyncClient(base_url=url, timeout=args.request_timeout * 4 + 5, limits=limits)
    async with client as http, trio.open_nursery() as nursery:
        for i in range(args.burst):
            nursery.start_soon(one, http, i)
    return tally


async def wait_ready(url: str, experts: list[str], timeout: float) -> None:
    import httpx
    import trio

    with trio.fail_after(timeout):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            while True:
                try:
                    ids = {card["id"] for card in (await http.get("/v1/models")).json()["data"]}
                    if all(name in ids for name in experts):
                        # Warm-up: one answer from each expert, one routed (loads the router's embedder).
                        for name in [*experts, "mosaic/route"]:
                            reply = await http.post("/v1/chat/completions", json=chat("Hi.", 2, model=name))
                            reply.raise_for_status()
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def describe(label: str, tally: Tally) -> str:
    lat = tally.latencies
    line = (f"{label}: answered {tally.answered}, failed {tally.failed}, timed out {tally.timed_out}, "
            f"abandoned {tally.abandoned}; latency p50 {percentile(lat, 0.5):.2f} s, p95 {percentile(lat, 0.95):.2f} s")
    if lat:
        line += f", mean {statistics.fmean(lat):.2f} s"
    if tally.failures:
        line += f"; failures {tally.failures}"
    return line


def stderr_lines(nodes: list[NodeProc]) -> tuple[int, int]:
    total = third_party = 0
    for node in nodes:
        for line in node.log.read_text(errors="replace").splitlines():
            total += 1
            if not re.search(r"logger=mosaic\.", line):
                third_party += 1
    return total, third_party


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--burst-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per expert (0: automatic)")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--model-cache", type=Path, default=None,
                        help="shared converted-model dir (default: a temp dir, converted once per run)")
    args = parser.parse_args()
    if args.clients < 1 or args.minutes <= 0 or args.burst < 1:
        parser.error("--clients, --minutes and --burst must be positive")

    import trio

    with tempfile.TemporaryDirectory(prefix="mosaic-soak-") as tmp:
        root = Path(tmp)
        cache = args.model_cache or root / "model-cache"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        nodes: list[NodeProc] = []
        try:
            t0 = time.perf_counter()
            nodes.append(start_node(root, "soak-0", ["--no-expert", "--http", f"127.0.0.1:{port}"], cache, 60))
            boot = ["--bootstrap", nodes[0].multiaddr, "--no-http", "--threads", str(args.threads)]
            # The first expert converts the model into the shared cache; the second finds it there.
            nodes.append(start_node(root, "soak-1", boot, cache, 600))
            nodes.append(start_node(root, "soak-2", boot, cache, 600))
            trio.run(wait_ready, url, ["soak-1", "soak-2"], 120.0)
            print(f"cluster up in {time.perf_counter() - t0:.1f} s: 1 coordinator + HTTP, 2 experts "
                  f"(SmolLM2-135M, torch threads {args.threads or 'auto'}); {os.cpu_count()} CPUs, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            before = {n.name: usage(n.process.pid) for n in nodes}
            lines_before = stderr_lines(nodes)

            t1 = time.perf_counter()
            tally = trio.run(soak, url, args)
            print(describe(f"soak ({args.clients} clients, {time.perf_counter() - t1:.0f} s, max_tokens <= "
                           f"{args.max_tokens})", tally), flush=True)
            time.sleep(3.0)
            middle = {n.name: usage(n.process.pid) for n in nodes}
            t2 = time.perf_counter()
            burst_tally = trio.run(burst, url, "soak-1", args)
            print(describe(f"burst ({args.burst} parallel on soak-1, max_tokens {args.burst_tokens}, "
                           f"{time.perf_counter() - t2:.1f} s)", burst_tally), flush=True)
            # Closed connections take a moment to be reaped on a loaded box: wait (bounded) for the
            # descriptors to come back within the bound; a leak never does.
            settle = time.monotonic()
            while True:
                time.sleep(1.0)
                after = {n.name: usage(n.process.pid) for n in nodes}
                settled = all(after[n.name][1] - before[n.name][1] <= FD_SETTLED for n in nodes)
                if settled or time.monotonic() - settle > 60:
                    break
            print(f"settled {time.monotonic() - settle:.0f} s after the burst", flush=True)
            ok = burst_tally.answered == args.burst and tally.failed == 0 and tally.timed_out == 0
            print("node     RSS start -> end (MiB)          fds start -> after soak -> end   bound")
            for node in nodes:
                (rss0, fd0), (rss1, fd1) = before[node.name], after[node.name]
                fd_mid = middle[node.name][1]
                rss_ok = rss1 - rss0 <= max(RSS_BOUND_BYTES, RSS_BOUND_RATIO * rss0)
                fd_ok = fd1 - fd0 <= FD_BOUND
                ok = ok and rss_ok and fd_ok
                print(f"{node.name}   {rss0 / 2**20:7.1f} -> {rss1 / 2**20:7.1f} ({(rss1 - rss0) / 2**20:+6.1f})"
                      f"      {fd0:5d} -> {fd_mid:5d} -> {fd1:5d} ({fd1 - fd0:+d})"
                      f"      {'ok' if rss_ok and fd_ok else 'EXCEEDED'}")
            total, third = stderr_lines(nodes)
            minutes = (time.perf_counter() - t1) / 60
            print(f"stderr: {total} lines from 3 nodes ({total - lines_before[0]} during the load, "
                  f"{(total - lines_before[0]) / minutes:.1f}/min); {third} from third-party loggers")
            print(f"bounds: RSS growth <= max({RSS_BOUND_BYTES // 2**20} MiB, {RSS_BOUND_RATIO:.0%}), "
                  f"fds growth <= {FD_BOUND}; soak without failures or timeouts; burst fully answered: "
                  f"{'PASS' if ok else 'FAIL'}")
            return 0 if ok else 1
        finally:
            for node in nodes:
                if node.process.poll() is None:
                    node.process.send_signal(signal.SIGTERM)
            for node in nodes:
                try:
                    node.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    node.process.kill()


if __name__ == "__main__":
    sys.exit(main())
