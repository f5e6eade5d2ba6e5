"""Finding peers: bootstrap dials, connection events, DHT routing-table upkeep.

* ``bootstrap=`` in ``new_host`` only connects to the bootstrap node; hosts do
  not meet each other and connections do not fill the DHT routing table (B5).
  We dial bootstrap peers ourselves, ``add_peer`` them and call
  ``refresh_routing_table()``, which walks the DHT and fills the table.
* Every new connection (bootstrap, mDNS, inbound) is reported by
  :class:`ConnectionWatcher` on a channel; the node answers it with a record
  exchange (:mod:`node.net.exchange`) and adds Mosaic peers to the routing table.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from libp2p.abc import IHost, INotifee
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from multiaddr import Multiaddr

from ..logs import event, get_logger

log = get_logger("net.discovery")

DIAL_TIMEOUT = 10.0


class DialError(Exception):
    """A multiaddr is malformed or the peer could not be reached / authenticated."""


def peer_info_from_multiaddr(addr: str) -> PeerInfo:
    """Parse ``/ip4/.../tcp/.../p2p/<id>``; raise :class:`DialError` on anything else."""
    try:
        return info_from_p2p_addr(Multiaddr(addr))
    except Exception as exc:  # multiaddr / libp2p raise several unrelated types
        raise DialError(f"{addr!r} is not a dialable multiaddr with /p2p/<peer id>: {exc}") from None


async def dial(host: IHost, addr: str, *, timeout: float = DIAL_TIMEOUT) -> str:
    """Connect to ``addr`` (Noise-authenticated); return the peer id."""
    info = peer_info_from_multiaddr(addr)
    try:
        with trio.fail_after(timeout):
            await host.connect(info)
    except trio.TooSlowError:
        raise DialError(f"dial {addr} timed out after {timeout:.0f}s") from None
    except Exception as exc:  # SwarmException, OpenConnectionError, handshake failures
        raise DialError(f"dial {addr} failed: {type(exc).__name__}: {exc}") from None
    return info.peer_id.to_base58()


def forget_dial_failure(host: IHost, addr: str) -> None:
    """Let ``addr``'s peer be dialled again now: py-libp2p refuses for 60 s to dial a peer
    whose addresses all failed ("negative cache"), which would defeat a retry schedule."""
    try:
        host.get_network().unblock_peer(peer_info_from_multiaddr(addr).peer_id)  # type: ignore[attr-defined]
    except (AttributeError, DialError):
        pass


async def add_to_routing_table(dht: KadDHT, peer_id: str) -> bool:
    """Add a known Mosaic (DHT server) peer to the routing table without the identify check."""
    try:
        return bool(await dht.add_peer(ID.from_base58(peer_id), skip_server_mode_check=True))
    except Exception as exc:
        event(log, "routing_add_failed", peer=peer_id, error=type(exc).__name__)
        return False


async def refresh_routing_table(dht: KadDHT) -> None:
    try:
        await dht.refresh_routing_table()
    except Exception as exc:  # a failed refresh is retried on the next interval
        event(log, "routing_refresh_failed", error=f"{type(exc).__name__}: {exc}"[:160])


def forget_peer(host: IHost, dht: KadDHT, peer_id: str) -> None:
    """Drop ``peer_id``'s addresses and routing-table entry, so nothing dials it again.

    py-libp2p's auto-connector redials every peerstore peer with addresses (every 30 s
    while the node holds fewer than 100 connections), and DHT walks dial routing-table
    peers: a CLI client that exited or a node that said goodbye was redialled forever,
    an error line each time.  It may come back by dialling us.
    """
    pid = ID.from_base58(peer_id)
    host.get_peerstore().clear_addrs(pid)
    try:
        dht.routing_table.remove_peer(pid)
    except Exception as exc:  # not in the table: nothing to forget
        event(log, "routing_remove_failed", peer=peer_id, error=type(exc).__name__)


def routing_table_peers(dht: KadDHT) -> set[str]:
    return {pid.to_base58() for pid in dht.routing_table.get_peer_ids()}


def connected_peers(host: IHost) -> set[str]:
    return {pid.to_base58() for pid in host.get_connected_peers()}


def _dialled_by_us(conn: object) -> bool | None:
    muxed = getattr(conn, "muxed_conn", None)
    value = getattr(muxed, "is_initiator_value", None)
    if value is None:
        value = getattr(getattr(muxed, "secured_conn", None), "is_initiator", None)
    return None if value is None else bool(value)


class ConnectionWatcher(INotifee):
    """Forwards "peer connected" events, ``(peer id, dialled by us?)``, to a trio channel,
    and calls ``on_disconnect(peer id)`` when a peer's last connection closed.

    ``send_nowait`` only: the swarm calls notifees inline and must never block on us.
    """

    def __init__(self, send: trio.MemorySendChannel[tuple[str, bool | None]], *,
                 on_disconnect: Callable[[str], None] | None = None) -> None:
        self._send = send
        self._on_disconnect = on_disconnect

    async def connected(self, network: object, conn: object) -> None:
        peer_id = conn.muxed_conn.peer_id.to_base58()  # type: ignore[attr-defined]
        try:
            self._send.send_nowait((peer_id, _dialled_by_us(conn)))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # A full queue only delays discovery: the periodic DHT sync catches up.
            event(log, "connection_event_dropped", peer=peer_id)

    async def disconnected(self, network: object, conn: object) -> None:
        if self._on_disconnect is None:
            return
        peer = conn.muxed_conn.peer_id  # type: ignore[attr-defined]
        if peer not in getattr(network, "connections", {}):  # its last connection (the swarm removes it first)
            self._on_disconnect(peer.to_base58())

    async def opened_stream(self, network: object, stream: object) -> None:
        pass

    async def closed_stream(self, network: object, stream: object) -> None:
        pass

    async def listen(self, network: object, multiaddr: object) -> None:
        pass

    async def listen_close(self, network: object, multiaddr: object) -> None:
        pass
