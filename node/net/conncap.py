"""Inbound connection caps per IP address and per subnet (issue 12, attack 6).

Identities are free, addresses are not: one machine can open a connection per
fresh key, and each connection costs the node a Noise session, a yamux muxer,
pubsub and DHT state, and a DHT sync of its record.  py-libp2p 0.8.1 caps
connections per peer id (``max_connections_per_peer``) and in total, and its
resource manager only knows fixed CIDR rules (one shared counter for a whole
configured network), not "at most N from each address".  So the node admits
each new inbound connection here, in the order they arrive, and drops the ones
over the cap: per IP ``MAX_INBOUND_PER_IP``, per /24 (IPv4) or /48 (IPv6)
``MAX_INBOUND_PER_SUBNET``.  Connections we dialled are never refused (we chose
them), and loopback (this machine, every peer of a test cluster) is exempt
unless a test asks otherwise.  Stream caps per IP/subnet are in
:mod:`node.net.streams`.
"""

from __future__ import annotations

from collections.abc import Iterable

from libp2p.abc import IHost
from libp2p.peer.id import ID

from .addresses import connection_ip, exempt_from_caps, subnet_of

MAX_INBOUND_PER_IP = 16
MAX_INBOUND_PER_SUBNET = 64


class InboundCaps:
    """Which inbound peers each address holds; :meth:`admit` decides about a newcomer."""

    def __init__(self, per_ip: int = MAX_INBOUND_PER_IP, per_subnet: int = MAX_INBOUND_PER_SUBNET, *,
                 exempt_loopback: bool = True) -> None:
        self.per_ip = per_ip
        self.per_subnet = per_subnet
        self.exempt_loopback = exempt_loopback
        self._ip_of: dict[str, str] = {}  # admitted inbound peer -> its IP
        self.refused = 0

    def admit(self, peer_id: str, ip: str | None, connected: Iterable[str]) -> str | None:
        """Admit ``peer_id``'s new inbound connection from ``ip``, or say why not (``"ip"``, ``"subnet"``).

        ``connected``: the peers connected now; admitted peers no longer among
        them are forgotten first, so the caps count live connections only.
        Synchronous (no await between the count and the admission): connections
        greeted at once are admitted in order, never all refused together.
        """
        live = set(connected)
        for gone in [peer for peer in self._ip_of if peer not in live]:
            del self._ip_of[gone]
        if ip is None or (self.exempt_loopback and exempt_from_caps(ip)):
            return None
        others = [other for peer, other in self._ip_of.items() if peer != peer_id]
        if sum(other == ip for other in others) >= self.per_ip:
            self.refused += 1
            return "ip"
        subnet = subnet_of(ip)
        if sum(subnet_of(other) == subnet for other in others) >= self.per_subnet:
            self.refused += 1
            return "subnet"
        self._ip_of[peer_id] = ip
        return None

    def held(self, ip: str) -> int:
        """Inbound connections admitted from ``ip`` and still open when last counted."""
        return sum(other == ip for other in self._ip_of.values())


def forget_addresses(host: IHost, peer_id: str) -> None:
    """Drop a refused peer's addresses from the peerstore: py-libp2p's auto-connector dials
    peerstore peers (every 30 s while the node holds fewer than its ``low_watermark`` of 100
    connections), and a connection we dialled is not capped, so it could bring the refused
    peer back."""
    host.get_peerstore().clear_addrs(ID.from_base58(peer_id))


def remote_ip(host: IHost, peer_id: str) -> str | None:
    """The IP address of our (first) connection to ``peer_id``, or ``None`` when unknown."""
    try:
        connections = host.get_network().get_connections(ID.from_base58(peer_id))
    except Exception:  # not connected any more
        return None
    for conn in connections:
        ip = connection_ip(conn.muxed_conn)
        if ip:
            return str(ip)
    return None
