"""Attack 6 (issue 12), connections: one address opening a connection per fresh identity.

Every connection costs the node a Noise session, a muxer, pubsub and DHT
state; per-peer caps do not bound it, as identities are free.  A node now keeps
at most ``MAX_INBOUND_PER_IP`` inbound connections per IP (and
``MAX_INBOUND_PER_SUBNET`` per /24 or /48), admitted in arrival order; the rest
are dropped.  Loopback is exempt in production (this machine); the real-node
test switches the exemption off, as every host here shares 127.0.0.1.
"""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError

import protocol as p
from node.net.conncap import MAX_INBOUND_PER_IP, InboundCaps
from node.net.discovery import connected_peers, dial
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from tests.cluster.harness import in_process_cluster

ATTACKERS = MAX_INBOUND_PER_IP + 6


async def _run_host(host, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        async with host.run(listen_addrs=listen_multiaddrs(["/ip4/127.0.0.1/tcp/0"])):
            task_status.started(scope)
            await trio.sleep_forever()


async def _connect_fresh_identity(nursery: trio.Nursery, addr: str, hosts: dict[str, trio.CancelScope]) -> str:
    """A new identity on its own host, dialled to ``addr``; ``hosts`` maps it to the scope that stops it."""
    host = build_host(libp2p_key_pair(p.Identity.generate()), ["/ip4/127.0.0.1/tcp/0"])
    peer = host.get_id().to_base58()
    hosts[peer] = await nursery.start(_run_host, host)
    for _ in range(3):  # a dial that timed out on a loaded box never reached the node: try again
        try:
            await dial(host, addr)
            break
        except Exception:
            await trio.sleep(0.5)
    return peer


def known_addrs(host, peer: str) -> list:
    try:
        return host.get_peerstore().addrs(ID.from_base58(peer))
    except PeerStoreError:
        return []


@pytest.mark.timeout(120)
async def test_one_address_holds_only_its_share_of_connections() -> None:
    with trio.fail_after(100):
        async with in_process_cluster() as cluster, trio.open_nursery() as nursery:
            victim = await cluster.add(0)
            victim.inbound_caps.exempt_loopback = False  # every attacker here is 127.0.0.1
            addr = victim.full_multiaddrs()[0]
            hosts: dict[str, trio.CancelScope] = {}
            attackers = [await _connect_fresh_identity(nursery, addr, hosts) for _ in range(ATTACKERS)]

            def held() -> int:
                return len(connected_peers(victim.host) & set(attackers))

            with trio.move_on_after(30):  # the extra ones are dropped once greeted
                while victim.inbound_caps.refused < ATTACKERS - MAX_INBOUND_PER_IP or held() > MAX_INBOUND_PER_IP:
                    await trio.sleep(0.1)
            await trio.sleep(1.0)
            assert held() == MAX_INBOUND_PER_IP, (held(), victim.inbound_caps.refused, victim.inbound_caps._ip_of)
            # The refused are forgotten, so libp2p's auto-connector (it dials peerstore peers every
            # 30 s below 100 connections) cannot bring them back as uncapped outbound connections.
            refused = set(attackers) - connected_peers(victim.host)
            assert len(refused) == ATTACKERS - MAX_INBOUND_PER_IP
            assert not any(known_addrs(victim.host, peer) for peer in refused)
            assert victim.inbound_caps.held("127.0.0.1") == MAX_INBOUND_PER_IP

            # A slot freed is a slot for the next newcomer: the caps count live connections.  The
            # refused and the dropped hosts stop first: their own auto-connectors redial the node, and
            # on a loaded box one of them took the freed slot before the newcomer came.
            leaving = sorted(connected_peers(victim.host) & set(attackers))[0]
            for peer in refused | {leaving}:
                hosts[peer].cancel()
            await victim.host.disconnect(ID.from_base58(leaving))
            late = await _connect_fresh_identity(nursery, addr, hosts)
            with trio.fail_after(20):
                while late not in victim.inbound_caps._ip_of:
                    await trio.sleep(0.1)
            await trio.sleep(1.0)
            assert late in connected_peers(victim.host)
            nursery.cancel_scope.cancel()


def test_inbound_caps_per_address_and_subnet() -> None:
    caps = InboundCaps(per_ip=4, per_subnet=6)
    connected = {f"sybil-{i}" for i in range(10)} | {f"neighbour-{i}" for i in range(10)} | {"far", "local"}
    admitted = [caps.admit(f"sybil-{i}", "203.0.113.7", connected) for i in range(10)]
    assert admitted == [None] * 4 + ["ip"] * 6
    admitted = [caps.admit(f"neighbour-{i}", f"203.0.113.{20 + i}", connected) for i in range(10)]
    assert admitted == [None] * 2 + ["subnet"] * 8
    assert caps.admit("far", "198.51.100.1", connected) is None  # another subnet
    assert caps.admit("local", "127.0.0.1", connected) is None  # this machine
    # A sybil that left frees its slot for the next identity at that address.
    connected.discard("sybil-0")
    assert caps.admit("sybil-10", "203.0.113.7", connected | {"sybil-10"}) is None
    assert caps.held("203.0.113.7") == 4
