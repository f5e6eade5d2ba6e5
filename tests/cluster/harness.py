"""Cluster harness: N real Mosaic nodes on 127.0.0.1, in one trio process or as OS processes.

Identities are fixed (seed = sha256(b"mosaic-test-node-%d")), so every test
knows peer ids before anything starts, as in petals' localhost swarm.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node.app import Node, Service
from node.config import NodeConfig
from node.net.keys import write_identity
from protocol import Identity

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTEN_LINE = re.compile(r"^mosaic node (\S+) listening on (\S+)$")


def fixed_seed(index: int) -> bytes:
    return hashlib.sha256(b"mosaic-test-node-%d" % index).digest()


def fixed_identity(index: int) -> Identity:
    """The fixed identity of test node ``index`` (its peer id is known ahead of time)."""
    return Identity.from_seed(fixed_seed(index))


def node_config(data_dir: Path, index: int, *, bootstrap: Sequence[str] = (), **net: object) -> NodeConfig:
    """A loopback config for test node ``index`` with a short TTL; ``net`` overrides NetConfig fields."""
    config = NodeConfig(data_dir=str(data_dir), name=f"node-{index}", tags=["test", f"n{index}"])
    config.net.listen = ["/ip4/127.0.0.1/tcp/0"]
    config.net.bootstrap = list(bootstrap)
    config.net.record_ttl = 3.0
    config.net.announce_interval = 1.0
    config.net.dht_republish_interval = 1.0
    config.net.dht_sync_interval = 1.0
    config.net.routing_refresh_interval = 5.0
    config.expert.enabled = False
    config.http.enabled = False
    for key, value in net.items():
        setattr(config.net, key, value)
    return config


def prepare_data_dir(root: Path, index: int) -> Path:
    data_dir = root / f"node-{index}"
    write_identity(data_dir, fixed_identity(index))
    return data_dir


@dataclass
class InProcessCluster:
    """Nodes sharing one trio loop; each node has its own cancel scope so tests can stop one."""

    root: Path
    nursery: trio.Nursery
    nodes: list[Node] = field(default_factory=list)
    scopes: list[trio.CancelScope] = field(default_factory=list)

    async def add(self, index: int, *, bootstrap: Sequence[str] | None = None, services: Sequence[Service] = (), table_exchange: bool = True, description: str | None = None, tags: Sequence[str] | None = None, **net: object) -> Node:
        """Start node ``index``; by default it bootstraps from the first node.

        ``description`` and ``tags`` replace the node's defaults (what routing matches on).
        """
        if bootstrap is None:
            bootstrap = [self.nodes[0].full_multiaddrs()[0]] if self.nodes else []
        config = node_config(prepare_data_dir(self.root, index), index, bootstrap=bootstrap, **net)
        if description is not None:
            config.description = description
        if tags is not None:
            config.tags = list(tags)
        node = Node(config, services=services)
        node.table_exchange = table_exchange
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await node.run(task_status=task_status)

        await self.nursery.start(run)
        self.nodes.append(node)
        self.scopes.append(scope)
        return node

    def stop(self, node: Node) -> None:
        self.scopes[self.nodes.index(node)].cancel()


@asynccontextmanager
async def in_process_cluster(count: int = 0, **net: object) -> AsyncIterator[InProcessCluster]:
    """Start ``count`` nodes (node 0 first, the others bootstrapping from it)."""
    with tempfile.TemporaryDirectory(prefix="mosaic-cluster-") as tmp:
        async with trio.open_nursery() as nursery:
            cluster = InProcessCluster(Path(tmp), nursery)
            for index in range(count):
                await cluster.add(index, **net)
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()


@dataclass
class NodeProcess:
    index: int
    peer_id: str
    multiaddr: str
    process: subprocess.Popen[str]
    data_dir: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait for the clean shutdown; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=timeout)


def start_process(root: Path, index: int, *, bootstrap: Sequence[str] = (), extra: Sequence[str] = (), config_text: str | None = None, timeout: float = 30.0,
                  expert: bool = False) -> NodeProcess:
    """Run ``python -m node start`` for test node ``index`` and parse the printed multiaddr.
    ``expert``: serve the embedded model (from the shared $MOSAIC_CACHE_DIR) instead of ``--no-expert``."""
    data_dir = prepare_data_dir(root, index)
    args = [sys.executable, "-m", "node", "start", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0",
            "--name", f"node-{index}", "--tags", f"test,n{index}", "--no-http"]
    if not expert:
        args.append("--no-expert")
    if config_text is not None:
        path = root / f"node-{index}.toml"
        path.write_text(config_text)
        args += ["--config", str(path)]
    for addr in bootstrap:
        args += ["--bootstrap", addr]
    args += list(extra)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=(root / f"node-{index}.log").open("w"), text=True, env=env)
    line = _read_line(process, timeout)
    match = LISTEN_LINE.match(line.strip())
    if match is None:
        process.kill()
        log = (root / f"node-{index}.log").read_text()[-3000:]
        raise RuntimeError(f"node {index} did not print its address (got {line!r}); log tail:\n{log}")
    return NodeProcess(index, match.group(1), match.group(2), process, data_dir)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """One stdout line, or '' after ``timeout`` s (a thread so a hung child cannot hang us)."""
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


@contextmanager
def process_cluster(count: int, *, extra: Sequence[str] = (), config_text: str | None = None) -> Iterator[tuple[Path, list[NodeProcess]]]:
    with tempfile.TemporaryDirectory(prefix="mosaic-procs-") as tmp:
        root = Path(tmp)
        procs: list[NodeProcess] = []
        try:
            for index in range(count):
                bootstrap = [procs[0].multiaddr] if procs else []
                procs.append(start_process(root, index, bootstrap=bootstrap, extra=extra, config_text=config_text))
            yield root, procs
        finally:
            for proc in procs:
                if proc.process.poll() is None:
                    proc.process.kill()
                    proc.process.wait()
