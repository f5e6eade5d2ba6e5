"""Being reachable behind NAT: relay reservations, and dialling peers through circuits.

A node that AutoNAT finds unreachable (:mod:`node.net.reachability`) keeps
``net.relay_reservations`` reservations on relays, found among the bootstrap peers and
the peers whose signed records offer the relay service.  It renews each at
``RENEW_FRACTION`` of its TTL, notices when a relay dies (its connection goes away
and cannot be re-made) and reserves on the next candidate, and every change re-signs
the node's record so its ``/p2p-circuit`` addresses stay true.

Dialling: py-libp2p's swarm skips ``/p2p-circuit`` addresses ("no relay transport"),
so :class:`CircuitDialer` dials them itself with
:class:`libp2p.relay.circuit_v2.CircuitV2Transport` (the transport's own RESERVE on
every dial is switched off: a dialer needs no reservation).  :func:`node.net.streams.open_stream`
calls it before opening a stream to a peer it is not connected to.

Why our own RESERVE exchange rather than ``CircuitV2Transport.reserve``: upstream
returns only a bool (the refusal reason is logged, not returned), refreshes only 30 s
before expiry, and never moves to another relay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from multiaddr import Multiaddr

from ..logs import event, get_logger, limited_event
from .circuits import CIRCUIT, circuit_addrs_of, direct_addrs_of, split_circuit

log = get_logger("net.relay")

RESERVE_TIMEOUT = 10.0
RENEW_FRACTION = 0.8
# A relay that refused or failed is not asked again for this long (doubling up to 10 min).
RETRY_FIRST = 5.0
RETRY_MAX = 600.0
# A circuit that the relay refused (no reservation, limits) is not dialled again for this long.
CIRCUIT_FAILURE_TTL = 30.0
# Seconds to try a peer's direct addresses before its circuits (they fail fast when unroutable).
DIRECT_FIRST_TIMEOUT = 2.0

_STATUS_TEXT = {
    StatusCode.RESERVATION_REFUSED: "the relay refused the reservation",
    StatusCode.RESOURCE_LIMIT_EXCEEDED: "the relay's limits are reached (per IP, per peer or in total)",
    StatusCode.PERMISSION_DENIED: "the relay denied permission",
    StatusCode.CONNECTION_FAILED: "the relay could not reach the peer",
    StatusCode.NO_RESERVATION: "the peer holds no reservation on that relay",
    StatusCode.MALFORMED_MESSAGE: "the relay could not parse the request",
}


class RelayError(Exception):
    """A relay refused or failed a reservation or a circuit."""


def status_text(code: int) -> str:
    try:
        return _STATUS_TEXT.get(StatusCode(code), f"relay status {code}")
    except ValueError:
        return f"relay status {code}"


@dataclass
class HeldReservation:
    relay: str
    relay_addrs: list[str]  # the relay's own addresses with /p2p/<relay>
    expires_at: float
    granted_at: float = field(default_factory=time.time)

    def circuit_addrs(self, own_peer_id: str) -> list[str]:
        return [f"{addr}{CIRCUIT}/p2p/{own_peer_id}" for addr in self.relay_addrs]


async def reserve_on(host: IHost, relay: str, *, timeout: float = RESERVE_TIMEOUT) -> HeldReservation:
    """One Circuit Relay v2 RESERVE on a relay we are connected to; raise :class:`RelayError`."""
    relay_id = ID.from_base58(relay)
    stream = None
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(relay_id, [TProtocol(HOP_PROTOCOL_ID)])
            await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
            reply = await read_delimited_msg(stream, HopMessage)
    except trio.TooSlowError:
        raise RelayError(f"relay {relay[-8:]} did not answer RESERVE within {timeout:.0f}s") from None
    except Exception as exc:
        raise RelayError(f"relay {relay[-8:]}: {type(exc).__name__}: {exc}"[:300]) from None
    finally:
        if stream is not None:
            with trio.move_on_after(1):
                try:
                    await stream.close()
                except Exception:
                    pass
    code = reply.status if reply.HasField("status") else StatusCode.OK
    if code != StatusCode.OK:
        raise RelayError(f"relay {relay[-8:]} refused the reservation: {status_text(code)}")
    if not reply.HasField("reservation") or reply.reservation.expire <= time.time():
        raise RelayError(f"relay {relay[-8:]} sent a reservation without a future expiry")
    addrs = []
    for raw in list(reply.reservation.addrs)[:8]:
        try:
            text = str(Multiaddr(bytes(raw)))
        except Exception:
            continue
        if CIRCUIT not in text and text.endswith(f"/p2p/{relay}"):
            addrs.append(text)
    if not addrs:  # the relay did not say where it is: use the addresses we dialled
        addrs = [f"{a}/p2p/{relay}" for a in map(str, host.get_peerstore().addrs(relay_id)) if CIRCUIT not in a][:4]
    return HeldReservation(relay=relay, relay_addrs=addrs, expires_at=float(reply.reservation.expire))


# --------------------------------------------------------------------------- dialling


class CircuitDialer:
    """Connects to peers we cannot dial directly through their ``/p2p-circuit`` addresses."""

    def __init__(self, host: IHost, protocol: CircuitV2Protocol, *, addrs_of: Callable[[str], list[str]],
                 dial_timeout: float = 10.0) -> None:
        self.host = host
        # STOP only: a dialer never reserves (upstream's CLIENT role reserves on every dial).
        self.transport = CircuitV2Transport(host, protocol, RelayConfig(roles=RelayRole.STOP))
        self.addrs_of = addrs_of
        self.dial_timeout = dial_timeout
        self._failed: dict[str, tuple[float, str]] = {}  # circuit addr -> (until, why)
        self.circuits_dialled = 0

    def is_connected(self, peer_id: str) -> bool:
        # A key with an empty list is left behind by failed dials: not a connection.
        return bool(self.host.get_network().connections.get(ID.from_base58(peer_id)))

    async def ensure_connected(self, peer_id: str) -> None:
        """Connect to ``peer_id`` through a circuit when we are not connected and it has one.

        Direct addresses come first unless none is known; a peer that only offers circuits
        (its record says it is unreachable) is dialled through them.  Raises
        :class:`RelayError` when every circuit failed, with each relay's reason.
        """
        if self.is_connected(peer_id):
            return
        addrs = self.addrs_of(peer_id)
        circuits = circuit_addrs_of(peer_id, addrs)
        if not circuits:
            return  # the swarm dials direct addresses from the peerstore as usual
        direct = [a for a in direct_addrs_of(addrs) if "/ip4/127." not in a and "/p2p/" in a]
        if direct:  # a peer on our LAN, or with a forwarded port: no relay needed
            with trio.move_on_after(DIRECT_FIRST_TIMEOUT):
                try:
                    await self.host.connect(PeerInfo(ID.from_base58(peer_id),
                                                     [Multiaddr(a.rsplit("/p2p/", 1)[0]) for a in direct[:4]]))
                    return
                except Exception as exc:
                    limited_event(log, "direct_dial_failed", peer=peer_id, error=f"{type(exc).__name__}"[:80])
        now = time.monotonic()
        reasons = []
        for addr in circuits:
            until, why = self._failed.get(addr, (0.0, ""))
            if until > now:
                reasons.append(why)
                continue
            limited_event(log, "circuit_dial", peer=peer_id, addr=addr)
            try:
                await self.dial(addr)
                return
            except RelayError as exc:
                limited_event(log, "circuit_dial_failed", peer=peer_id, error=str(exc)[:200])
                self._failed[addr] = (time.monotonic() + CIRCUIT_FAILURE_TTL, str(exc))
                reasons.append(str(exc))
        if len(self._failed) > 4096:
            self._failed.clear()
        raise RelayError(f"cannot reach {peer_id[-8:]} through its relays: " + "; ".join(reasons)[:400])

    async def dial(self, circuit_addr: str) -> None:
        parts = split_circuit(circuit_addr)
        if parts is None:
            raise RelayError(f"not a circuit address: {circuit_addr[:120]}")
        relay_addr, relay, target = parts
        try:
            with trio.fail_after(self.dial_timeout):
                await self.host.connect(PeerInfo(ID.from_base58(relay), [Multiaddr(relay_addr)]))
                await self.transport.dial(Multiaddr(circuit_addr))
        except trio.TooSlowError:
            raise RelayError(f"circuit via {relay[-8:]} timed out after {self.dial_timeout:.0f}s") from None
        except Exception as exc:
            text = str(exc)
            for code in StatusCode:
                if f"StatusCode.{code.name}" in text or f"status {int(code)}" in text:
                    text = status_text(code)
                    break
            raise RelayError(f"circuit via {relay[-8:]} failed: {text}"[:300]) from None
        self.circuits_dialled += 1
        limited_event(log, "circuit_dialled", peer=target, relay=relay)


# --------------------------------------------------------------------------- reservations


@dataclass
class Candidate:
    peer_id: str
    addrs: list[str]


class RelayKeeper:
    """Holds ``want`` reservations while :attr:`active`; see the module doc."""

    def __init__(self, host: IHost, own_peer_id: str, *, want: int, candidates: Callable[[], list[Candidate]],
                 on_change: Callable[[], None], check_interval: float = 10.0) -> None:
        self.host = host
        self.own_peer_id = own_peer_id
        self.want = want
        self.candidates = candidates
        self.on_change = on_change
        self.check_interval = check_interval
        self.active = False
        self.reservations: dict[str, HeldReservation] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # relay -> (not before, next delay)
        self._wake = trio.Event()
        self.last_error = ""
        self.moves = 0

    def circuit_addrs(self) -> list[str]:
        out: list[str] = []
        for held in sorted(self.reservations.values(), key=lambda h: h.granted_at):
            out.extend(held.circuit_addrs(self.own_peer_id)[:2])
        return out[:4]

    def holds(self, relay: str) -> bool:
        return relay in self.reservations

    def set_active(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            changed = await self.tend()
            if changed:
                self.on_change()
            with trio.move_on_after(self.check_interval):
                await self._wake.wait()
            self._wake = trio.Event()

    async def tend(self) -> bool:
        """One round: drop dead or lapsed reservations, renew old ones, fill up to ``want``."""
        changed = False
        if not self.active:
            if self.reservations:
                self.reservations.clear()
                return True
            return False
        now = time.time()
        for relay, held in list(self.reservations.items()):
            alive = bool(self.host.get_network().connections.get(ID.from_base58(relay)))
            due = now >= held.granted_at + RENEW_FRACTION * (held.expires_at - held.granted_at)
            if alive and not due:
                continue
            try:
                if not alive:
                    await self._connect(relay, held.relay_addrs)
                self.reservations[relay] = await reserve_on(self.host, relay)
                if not alive:
                    changed = True
            except (RelayError, OSError, trio.TooSlowError) as exc:
                del self.reservations[relay]
                self._backoff(relay)
                self.last_error = str(exc)
                self.moves += 1
                event(log, "relay_lost", relay=relay, error=str(exc)[:200])
                changed = True
        for cand in self.candidates():
            if len(self.reservations) >= self.want:
                break
            if cand.peer_id in self.reservations or cand.peer_id == self.own_peer_id:
                continue
            not_before, _ = self._retry.get(cand.peer_id, (0.0, 0.0))
            if not_before > time.monotonic():
                continue
            try:
                await self._connect(cand.peer_id, cand.addrs)
                held = await reserve_on(self.host, cand.peer_id)
            except (RelayError, OSError, trio.TooSlowError) as exc:
                self._backoff(cand.peer_id)
                self.last_error = str(exc)
                limited_event(log, "relay_reserve_failed", relay=cand.peer_id, error=str(exc)[:200])
                continue
            self.reservations[cand.peer_id] = held
            self._retry.pop(cand.peer_id, None)
            event(log, "relay_reserved", relay=cand.peer_id, addrs=",".join(held.relay_addrs),
                  ttl=f"{held.expires_at - time.time():.0f}s")
            changed = True
        return changed

    async def _connect(self, relay: str, addrs: list[str]) -> None:
        direct = [Multiaddr(a.split("/p2p/")[0]) for a in direct_addrs_of(addrs) if a.startswith("/")]
        with trio.fail_after(RESERVE_TIMEOUT):
            try:
                await self.host.connect(PeerInfo(ID.from_base58(relay), direct))
            except trio.TooSlowError:
                raise
            except Exception as exc:
                raise RelayError(f"cannot connect to relay {relay[-8:]}: {type(exc).__name__}: {exc}"[:300]) from None

    def _backoff(self, relay: str) -> None:
        _, delay = self._retry.get(relay, (0.0, RETRY_FIRST / 2))
        delay = min(delay * 2, RETRY_MAX)
        self._retry[relay] = (time.monotonic() + delay, delay)

    def snapshot(self) -> dict[str, object]:
        now = time.time()
        return {
            "active": self.active,
            "want": self.want,
            "relays": [{"relay": h.relay, "expires_in": round(h.expires_at - now),
                        "addrs": h.circuit_addrs(self.own_peer_id)} for h in self.reservations.values()],
            "moves": self.moves,
            "last_error": self.last_error[:200],
        }
