"""``/p2p-circuit`` addresses and connections: parse, check, classify (pure, no I/O).

A circuit address is ``<relay multiaddr>/p2p/<relay>/p2p-circuit/p2p/<target>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from multiaddr import Multiaddr

if TYPE_CHECKING:
    from libp2p.abc import IHost

CIRCUIT = "/p2p-circuit"
# A record may list at most this many circuit addresses: reserving on every relay
# buys a node nothing (issue 20, "bad actors"); dialers ignore the rest.
MAX_CIRCUIT_ADDRS = 4


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


def split_circuit(addr: str) -> tuple[str, str, str] | None:
    """``(relay multiaddr with /p2p/<relay>, relay peer id, target peer id)`` or ``None``."""
    if CIRCUIT + "/p2p/" not in addr:
        return None
    relay_part, _, target = addr.partition(CIRCUIT + "/p2p/")
    if not target or "/" in target or "/p2p/" not in relay_part:
        return None
    relay_id = relay_part.rsplit("/p2p/", 1)[1]
    if not relay_id or "/" in relay_id or not relay_part.startswith("/"):
        return None
    try:
        Multiaddr(addr)
    except Exception:
        return None
    return relay_part, relay_id, target


def circuit_addrs_of(peer_id: str, addrs: tuple[str, ...] | list[str]) -> list[str]:
    """The circuit addresses among ``addrs`` that really lead to ``peer_id`` (capped).

    An address whose target is another peer is dropped: a record can only offer ways
    to reach its own issuer.
    """
    out = []
    for addr in addrs:
        parts = split_circuit(addr)
        if parts is None or parts[2] != peer_id or parts[1] == peer_id:
            continue
        out.append(addr)
        if len(out) >= MAX_CIRCUIT_ADDRS:
            break
    return out


def direct_addrs_of(addrs: tuple[str, ...] | list[str]) -> list[str]:
    return [a for a in addrs if not is_circuit(a)]


def connection_kind(conn: object) -> str:
    """``"relayed"`` when a swarm connection runs over a circuit, else ``"direct"``."""
    try:
        addrs = conn.get_transport_addresses()  # type: ignore[attr-defined]
    except Exception:
        addrs = []
    if addrs and all(CIRCUIT in str(a) for a in addrs):
        return "relayed"
    try:
        kind = conn.get_connection_type()  # type: ignore[attr-defined]
        if "RELAY" in str(kind).upper():
            return "relayed"
    except Exception:
        pass
    return "direct"


def path_to(host: IHost, peer_id: str) -> str:
    """``local``, ``direct`` (any direct connection: the swarm prefers it), ``relayed``, or ``""``."""
    if peer_id == str(host.get_id()):
        return "local"
    from libp2p.peer.id import ID

    try:
        conns = host.get_network().connections.get(ID.from_base58(peer_id))
    except Exception:
        return ""
    if not conns:
        return ""
    conns = conns if isinstance(conns, list) else [conns]
    kinds = {connection_kind(c) for c in conns}
    return "direct" if "direct" in kinds else "relayed"
