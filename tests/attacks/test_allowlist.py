"""Attack 8 (issue 12): in an open swarm anyone may connect, and the HTTP token does not
cover libp2p.  A private swarm (``--trust PEER_ID`` / ``net.trusted_peers``) refuses
outsiders' connections, streams and records."""

from __future__ import annotations

import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.executor import QueryFailed
from node.coordinator.service import QueryService
from node.net.discovery import dial
from node.net.streams import StreamClosed
from tests.cluster.harness import fixed_identity, in_process_cluster

from .adversary import adversary, sybil_records


async def test_private_swarm_refuses_outsiders() -> None:
    members = [fixed_identity(i).peer_id for i in (0, 1)]
    with trio.fail_after(60):
        async with in_process_cluster() as cluster, adversary() as evil:
            a = await cluster.add(0, services=[QueryService()], trusted_peers=members)
            b = await cluster.add(1, services=[QueryService()], trusted_peers=members)
            await a.registry.wait_for(lambda r: b.peer_id in r, timeout=15)
            # An outsider node (open config) bootstrapping from a member is cut off.
            outsider = await cluster.add(2, services=[QueryService()])
            await a.registry.wait_for(lambda r: r.rejected["stream:NotTrusted"] or r.rejected["gossip:NotTrusted"]
                                      or outsider.peer_id not in {str(x) for x in a.host.get_connected_peers()}, timeout=15)
            # A raw client: it can dial, but no protocol of ours answers it.
            await dial(evil.host, a.full_multiaddrs()[0])
            request = p.QueryRequest(request_id="outsider", prompt="hi", timeout_s=10.0)
            try:
                with trio.fail_after(15):
                    async for _ in ask(evil.host, a.peer_id, request):
                        pass
            except (QueryFailed, StreamClosed) as exc:
                assert "private swarm" in str(exc) or getattr(exc, "code", "") == "unavailable"
            else:
                raise AssertionError("an outsider's query was answered")
            # Records of outsiders relayed by anyone never enter a member's table.
            a.registry.offer(sybil_records(1)[0], source="gossip", via=b.peer_id)
            await trio.sleep(1.0)
            for member in (a, b):
                assert member.registry.peer_ids() == set(members)
            # Members still talk to each other: b's coordinator takes a's query (and says it
            # knows no expert, as neither serves one).
            try:
                with trio.fail_after(15):
                    async for _ in ask(a.host, b.peer_id, p.QueryRequest(request_id="member", prompt="hi", timeout_s=10.0)):
                        pass
            except QueryFailed as exc:
                assert "no expert is known" in exc.message
