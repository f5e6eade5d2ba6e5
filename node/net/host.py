"""libp2p host construction with safe defaults.

py-libp2p 0.8.1 defaults are unsafe or slow (research/libp2p.md):

* B2: ``new_host()`` offers ``/plaintext/2.0.0`` next to Noise and a plaintext-only
  peer *connects*.  We pass a Noise-only ``sec_opt``; such a peer is rejected.
* B1: every dial waits 250 ms (happy-eyeballs) unless the per-peer connection cap
  is reached: ``ConnectionConfig(max_connections_per_peer=1)`` -> 7-18 ms dials.
* B7/B8: QUIC does ~2 MiB/s and mplex is 4x slower than yamux for bulk data:
  TCP + Noise + yamux only.
* Issue 22, attack 1: an inbound connection holds one of 250 inbound slots until
  the host stops, closed or not (permanent lockout after 250 short connections);
  :mod:`node.net.inbound_slots` releases the slot when the connection closes.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from multiaddr import Multiaddr

from .inbound_slots import release_inbound_slots_on_close

# Peers dialled concurrently never exceed this per peer (B1 workaround, also dedups races).
MAX_CONNECTIONS_PER_PEER = 1
DIAL_TIMEOUT = 10.0


def build_host(key_pair: KeyPair, listen: Sequence[str], *, mdns: bool = False) -> IHost:
    """A TCP + Noise + yamux host for ``key_pair``; start it with ``host.run(listen_addrs)``.

    ``mdns`` announces and discovers peers on the LAN (measured to work on loopback too);
    discovered peers are dialled by libp2p and reach us through the connection notifee.
    """
    addrs = [Multiaddr(a) for a in listen]
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        listen_addrs=addrs,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        enable_quic=False,
        enable_mDNS=mdns,
        connection_config=ConnectionConfig(
            max_connections_per_peer=MAX_CONNECTIONS_PER_PEER,
            dial_timeout=DIAL_TIMEOUT,
        ),
    )
    release_inbound_slots_on_close(host)
    return host


def listen_multiaddrs(listen: Sequence[str]) -> list[Multiaddr]:
    return [Multiaddr(a) for a in listen]


def _local_ipv4() -> list[str]:
    """This machine's primary IPv4 address (no packet is sent) and loopback."""
    found = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # UDP connect only picks a route
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    return [ip for ip in found if ip != "127.0.0.1"] + ["127.0.0.1"]


def expand_wildcard(addr: str) -> list[str]:
    """``/ip4/0.0.0.0/...`` -> one address per local IPv4 interface; others unchanged."""
    if not addr.startswith("/ip4/0.0.0.0/"):
        return [addr]
    rest = addr[len("/ip4/0.0.0.0/") :]
    return [f"/ip4/{ip}/{rest}" for ip in _local_ipv4()]


async def disconnect_all(host: IHost, *, timeout: float = 2.0) -> None:
    """Close every connection, shielded and bounded: call before stopping pubsub/DHT services.

    py-libp2p keeps reading pubsub streams in the swarm's tasks after the Pubsub
    service has stopped; an RPC arriving in that window schedules work into the
    service's closed nursery and the RuntimeError tears down the host (seen in
    tests as "Nursery is closed to new arrivals").  No connections, no RPCs.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(timeout):
        for peer_id in list(host.get_connected_peers()):
            try:
                await host.disconnect(peer_id)
            except Exception:  # already gone
                pass


async def disconnect_peer(host: IHost, peer_id: str, *, timeout: float = 2.0) -> None:
    """Close our connection to ``peer_id`` (bounded; a peer already gone is not an error)."""
    from libp2p.peer.id import ID

    with trio.move_on_after(timeout):
        try:
            await host.disconnect(ID.from_base58(peer_id))
        except Exception:  # already gone
            pass
