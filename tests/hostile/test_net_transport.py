"""Transport security: a node speaks Noise only (py-libp2p's default also offers plaintext, B2)."""

from __future__ import annotations

import pytest
import trio
from libp2p import new_host
from libp2p.crypto import ed25519
from libp2p.network.config import ConnectionConfig
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from node.net.discovery import DialError, dial, peer_info_from_multiaddr
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from protocol import Identity

from ..cluster.harness import in_process_cluster

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def _plaintext_only_host():
    key_pair = ed25519.create_new_key_pair()
    return new_host(
        key_pair=key_pair,
        listen_addrs=listen_multiaddrs(LOOPBACK),
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
        muxer_preference="YAMUX",
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


def _address(host) -> str:
    addr = str(host.get_addrs()[0])
    return addr if "/p2p/" in addr else f"{addr}/p2p/{host.get_id().to_base58()}"


async def test_plaintext_only_peer_cannot_connect_either_way() -> None:
    with trio.fail_after(30):
        async with in_process_cluster(1) as cluster:
            node = cluster.nodes[0]
            attacker = _plaintext_only_host()
            async with attacker.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
                # Outbound from the attacker: the node refuses /plaintext/2.0.0.
                with pytest.raises(Exception):
                    with trio.fail_after(10):
                        await attacker.connect(peer_info_from_multiaddr(node.full_multiaddrs()[0]))
                assert node.host.get_id() not in attacker.get_connected_peers()
                assert attacker.get_id() not in node.host.get_connected_peers()
                # Outbound from the node: it will not downgrade either.
                with pytest.raises(DialError):
                    await node.connect(_address(attacker))
                assert attacker.get_id() not in node.host.get_connected_peers()

                # Control: a Noise peer on the same loopback connects fine.
                honest = build_host(libp2p_key_pair(Identity.generate()), LOOPBACK)
                async with honest.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
                    peer_id = await dial(honest, node.full_multiaddrs()[0])
                    assert peer_id == node.peer_id
