"""A node behind a home router: reachability, relays, hole punching (issue 20).

:class:`NatTraversal` puts together, for one node, what ``node.net`` provides:

* :class:`node.net.reachability.Reachability` (AutoNAT) decides ``public``/``private``;
* :class:`node.net.relay_service.LimitedRelay` runs on every node: the STOP side (accept
  circuits from relays we hold a reservation on) always, the HOP side (be a relay for
  others) with ``--relay-service``;
* :class:`node.net.relay_client.RelayKeeper` holds reservations while we are private and
  re-signs our record when they change, :class:`~node.net.relay_client.CircuitDialer`
  dials peers that only offer circuits;
* py-libp2p's :class:`~libp2p.relay.circuit_v2.DCUtRProtocol` upgrades relayed connections
  to direct ones (TCP simultaneous open from the listen port) when the NATs allow.

The node passes in what it knows (records, bootstrap peers) as callables, so this
module does not depend on the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from libp2p.tools.anyio_service import background_trio_service

from .logs import event, get_logger
from .net.circuits import circuit_addrs_of, connection_kind, direct_addrs_of
from .net.discovery import peer_info_from_multiaddr
from .net.reachability import Reachability, on_our_lan
from .net.relay_client import Candidate, CircuitDialer, RelayKeeper
from .net.relay_service import LimitedRelay, RelayServiceLimits
from .net.streams import StreamPaths

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from protocol import CapabilityRecord

    from .config import NetConfig

log = get_logger("nat")


class NatTraversal:
    def __init__(self, host: IHost, peer_id: str, net: NetConfig, paths: StreamPaths, *,
                 own_addrs: Callable[[], list[str]],
                 records: Callable[[], list[CapabilityRecord]], record_of: Callable[[str], CapabilityRecord | None],
                 announce: Callable[[], Awaitable[None]], advertise: bool = True) -> None:
        self.host = host
        # A client node (``fetch``, ...) advertises nothing: it probes nothing and reserves nothing.
        self.advertise = advertise
        self.peer_id = peer_id
        self.net = net
        self._records = records
        self._record_of = record_of
        self._announce = announce
        self._own_addrs = own_addrs
        self._nursery: trio.Nursery | None = None
        self.relay = LimitedRelay(host, RelayServiceLimits(**dataclasses.asdict(net.relay_limits)).validate(),
                                  hop=net.relay_service)
        self.dialer = CircuitDialer(host, self.relay, addrs_of=self._addrs_of)
        paths.connector = self.dialer.ensure_connected  # circuits before a stream is opened
        self.keeper = RelayKeeper(host, peer_id, want=net.relay_reservations, candidates=self._candidates,
                                  on_change=self._relays_changed, check_interval=net.relay_check_interval)
        self.reachability = Reachability(host, mode=net.reachability, confirmations=net.autonat_confirmations,
                                         own_addrs=own_addrs, servers=self._autonat_servers,
                                         interval=net.autonat_interval, on_change=self._reachability_changed)
        self.keeper.active = self.reachability.state == "private"
        self.dcutr = None
        if net.holepunch:
            from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

            self.dcutr = DCUtRProtocol(host)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.relay), trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.dcutr is not None:
                await nursery.start(self._run_dcutr)
            if self.advertise:
                await nursery.start(self.keeper.run)
                await nursery.start(self.reachability.run)
            task_status.started()
            await trio.sleep_forever()

    async def _run_dcutr(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.dcutr is not None
        async with background_trio_service(self.dcutr):
            task_status.started()
            await trio.sleep_forever()

    # ------------------------------------------------------------------ what goes in our record

    def record_fields(self) -> dict[str, object]:
        return {"reachability": self.reachability.state, "relay_service": self.net.relay_service}

    def circuit_addrs(self) -> list[str]:
        return self.keeper.circuit_addrs() if self.keeper.active else []

    # ------------------------------------------------------------------ callbacks

    def _reachability_changed(self, state: str) -> None:
        self.keeper.set_active(state == "private")
        self._spawn(self._announce)

    def _relays_changed(self) -> None:
        event(log, "relay_addrs", addrs=",".join(self.keeper.circuit_addrs()) or "-")
        self._spawn(self._announce)

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn)

    def _addrs_of(self, peer_id: str) -> list[str]:
        record = self._record_of(peer_id)
        return list(record.multiaddrs) if record is not None else []

    def _candidates(self) -> list[Candidate]:
        """Relays to try: bootstrap peers, then peers whose records offer the service."""
        out: list[Candidate] = []
        for addr in self.net.bootstrap:
            try:
                out.append(Candidate(peer_info_from_multiaddr(addr).peer_id.to_base58(), [addr]))
            except Exception:
                continue
        seen = {c.peer_id for c in out}
        offering = [r for r in self._records() if getattr(r, "relay_service", False) and r.peer_id not in seen
                    and getattr(r, "reachability", "") != "private" and not r.withdrawn]
        for record in sorted(offering, key=lambda r: r.peer_id):
            addrs = direct_addrs_of(record.multiaddrs)
            if addrs:
                out.append(Candidate(record.peer_id, addrs))
        return out

    def _autonat_servers(self) -> list[str]:
        """Peers connected directly and not on our LAN, bootstrap first.

        A relayed connection cannot verify our address, and a LAN neighbour reaches us on
        our private address: neither says whether the internet can.
        """
        own = self._own_addrs()
        connections = self.host.get_network().connections
        direct = []
        for peer, conns in connections.items():
            conns = conns if isinstance(conns, list) else [conns]
            ips = [_remote_ip(c) for c in conns if connection_kind(c) == "direct"]
            if ips and not any(on_our_lan(ip, own) for ip in ips):
                direct.append(peer.to_base58())
        boot = []
        for addr in self.net.bootstrap:
            try:
                boot.append(peer_info_from_multiaddr(addr).peer_id.to_base58())
            except Exception:
                continue
        return [p for p in boot if p in direct] + sorted(p for p in direct if p not in boot and p != self.peer_id)

    # ------------------------------------------------------------------ status

    def connections(self, limit: int = 64) -> list[dict[str, object]]:
        """Each connected peer: how (direct / relayed) and over which addresses."""
        out: list[dict[str, object]] = []
        for peer, conns in list(self.host.get_network().connections.items())[:limit]:
            conns = conns if isinstance(conns, list) else [conns]
            out.append({"peer": peer.to_base58(), "kinds": [connection_kind(c) for c in conns],
                        "addrs": [a for c in conns for a in _addrs(c)]})
        return out

    def snapshot(self) -> dict[str, object]:
        out: dict[str, object] = {
            "reachability": self.reachability.snapshot(),
            "reservations": self.keeper.snapshot(),
            "circuit_addrs": self.circuit_addrs(),
            "holepunch": self.dcutr is not None,
            "circuits_dialled": self.dialer.circuits_dialled,
            "connections": self.connections(),
        }
        if self.net.relay_service:
            out["relay_service"] = self.relay.snapshot()
        return out


def _remote_ip(conn: object) -> str | None:
    try:
        address = conn.muxed_conn.get_remote_address()  # type: ignore[attr-defined]
    except Exception:
        return None
    return str(address[0]) if address else None


def _addrs(conn: object) -> list[str]:
    try:
        return [str(a) for a in conn.get_transport_addresses()][:4]  # type: ignore[attr-defined]
    except Exception:
        return []


def advertised_circuits(record: CapabilityRecord) -> list[str]:
    """The circuit addresses of ``record`` a dialer will use (they lead to its issuer; capped)."""
    return circuit_addrs_of(record.peer_id, record.multiaddrs)
