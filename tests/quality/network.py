"""The network a quality run asks: a coordinator and expert nodes on loopback, real models.

``team_network`` is the quickstart's shape: every expert serves the loaded
model it is given (the default team: Qwen2.5-Coder-1.5B on llama.cpp, see
benchmarks/answers.py; ``smol_network``: the tests' SmolLM2-135M), node 0
coordinates and also serves, nodes 1.. serve.  Each expert node is a member of the team
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

# Each team's floor on the easy set (every strategy must reach it).  The default team
# (Qwen2.5-Coder-1.5B) is held to the 0.85; greedy Qwen2.5-Coder-0.5B answers 33/40 and
# SmolLM2-135M 21-24/40 (docs/models.md), so their teams are held to 0.75 and 0.4: the test suite's light team checks the
# mechanics (no strategy below its member), the default team the quality.
SMOL_THRESHOLD = 0.4
TEAM_FLOORS = {"smollm2-135m": SMOL_THRESHOLD, "qwen2.5-0.5b": 0.75, "qwen2.5-1.5b": 0.85}


@dataclass
class Network:
    host: object
    peer: object
    team: Team
    address: str = ""  # node 0's multiaddr, to dial again (gate.ask_all's redial)

    async def redial(self) -> object:
        with trio.fail_after(30):
            return await dial(self.host, self.address)  # type: ignore[arg-type]


@asynccontextmanager
async def team_network(experts: list[object], *, name: str, threshold: float) -> AsyncIterator[Network]:
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
            address = nodes[0].full_multiaddrs()[0]
            with trio.fail_after(30):
                peer = await dial(host, address)
            members = tuple(f"node-{i}" for i in range(len(experts)))
            yield Network(host, peer, Team(f"{name} x{len(experts)}", members, threshold), address)


@asynccontextmanager
async def smol_network(experts: list[object], *, threshold: float = SMOL_THRESHOLD) -> AsyncIterator[Network]:
    """The test suite's light team: SmolLM2-135M experts (on the engine the fixture loaded)."""
    engine = getattr(experts[0], "engine", "torch")
    async with team_network(experts, name=f"SmolLM2-135M ({engine})", threshold=threshold) as network:
        yield network
