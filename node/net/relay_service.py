"""The relay service (``--relay-service``): py-libp2p's Circuit Relay v2 hop, with limits.

A public node that runs it lets nodes behind NAT hold a *reservation* on it and be
dialled through it: ``/ip4/<relay>/tcp/<port>/p2p/<relay>/p2p-circuit/p2p/<home node>``.
We use :class:`libp2p.relay.circuit_v2.CircuitV2Protocol` and fix or bound what it
leaves open (read in 0.8.1; each is in docs/operators.md, "Relays: upstream pitfalls"):

* RESERVE takes the peer id from the message's optional ``peer`` field when present,
  so one connection could reserve slots *for any peer id*: we always reserve for the
  connection's authenticated peer.
* Its limits are a total reservation count and per-reservation circuit count only; the
  per-IP and rate limits of its ``HopConfig`` are declared but never enforced.  We cap
  reservations per IP, concurrent circuits per source peer and per source IP, and new
  circuits per source IP per minute (a token bucket).
* The circuit duration cap is checked only when data arrives, so an idle circuit lives
  forever: our copy loop runs under a deadline.  We also count the bytes relayed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import write_delimited_msg

from ..logs import get_logger, limited_event

log = get_logger("net.relay")

_COPY_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RelayServiceLimits:
    """What one relay grants (config ``[net.relay_limits]``); see docs/operators.md."""

    max_reservations: int = 128
    reservations_per_ip: int = 4
    reservation_ttl: int = 3600
    circuit_duration: int = 120  # seconds one relayed connection may live
    circuit_bytes: int = 16 * 1024 * 1024  # bytes one relayed connection may carry (both ways)
    circuits_per_peer: int = 8  # concurrent circuits one peer may open or receive
    circuits_per_ip: int = 16  # concurrent circuits opened from one IP
    circuit_rate_per_ip: int = 60  # new circuits per minute from one IP

    def validate(self) -> RelayServiceLimits:
        for name in self.__dataclass_fields__:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"net.relay_limits.{name} must be > 0")
        return self


@dataclass
class RelayStats:
    reservations_granted: int = 0
    reservations_refused: int = 0
    circuits_opened: int = 0
    circuits_refused: int = 0
    circuits_active: int = 0
    bytes_relayed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _ip_of(stream: INetStream) -> str:
    try:
        address = stream.get_remote_address()
    except Exception:
        return "?"
    return str(address[0]) if address else "?"


class _RateBucket:
    """``rate`` events per minute per key, with a burst of ``rate``."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self._tokens.get(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60.0)
        if tokens < 1.0:
            self._tokens[key] = (tokens, now)
            return False
        self._tokens[key] = (tokens - 1.0, now)
        if len(self._tokens) > 10_000:  # bounded: forget the oldest keys
            for old in sorted(self._tokens, key=lambda k: self._tokens[k][1])[:5_000]:
                del self._tokens[old]
        return True


class LimitedRelay(CircuitV2Protocol):
    """Circuit Relay v2 hop with per-IP, per-peer and rate limits (see the module doc)."""

    def __init__(self, host: IHost, limits: RelayServiceLimits, *, hop: bool = True) -> None:
        self.service_limits = limits
        super().__init__(
            host,
            limits=RelayLimits(
                duration=limits.circuit_duration,
                data=limits.circuit_bytes,
                max_circuit_conns=limits.circuits_per_peer,
                max_reservations=limits.max_reservations,
                reservation_ttl=limits.reservation_ttl,
            ),
            allow_hop=hop,
        )
        self.stats = RelayStats()
        self._reservation_ip: dict[ID, str] = {}
        self._circuits_by_peer: Counter[ID] = Counter()
        self._circuits_by_ip: Counter[str] = Counter()
        self._circuit_rate = _RateBucket(limits.circuit_rate_per_ip)

    # ------------------------------------------------------------------ reservations

    def reservation_count(self) -> int:
        self.resource_manager._clean_expired()
        return len(self.resource_manager._reservations)

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        peer = stream.muxed_conn.peer_id  # never msg.peer: that would reserve for any peer id
        if msg.HasField("peer"):
            msg.ClearField("peer")
        ip = _ip_of(stream)
        live = {p for p in self.resource_manager._reservations if self.resource_manager.has_reservation(p)}
        for gone in [p for p in self._reservation_ip if p not in live]:
            del self._reservation_ip[gone]
        if peer not in live:
            same_ip = sum(1 for other, other_ip in self._reservation_ip.items() if other_ip == ip and other != peer)
            if same_ip >= self.service_limits.reservations_per_ip:
                await self._refuse_reservation(stream, peer, ip, f"{same_ip} reservations from {ip} already")
                return
            if len(live) >= self.service_limits.max_reservations:
                await self._refuse_reservation(stream, peer, ip, "relay full")
                return
        # Counted before upstream answers: it sleeps 0.1 s after its reply, and a burst of
        # RESERVEs from one IP must not all pass the check in that window.
        self._reservation_ip[peer] = ip
        await super()._handle_reserve(stream, msg)
        if self.resource_manager.has_reservation(peer):
            self.stats.reservations_granted += 1
        else:
            self._reservation_ip.pop(peer, None)

    async def _refuse_reservation(self, stream: INetStream, peer: ID, ip: str, why: str) -> None:
        self.stats.reservations_refused += 1
        limited_event(log, "relay_reservation_refused", peer=str(peer), ip=ip, reason=why)
        await write_delimited_msg(
            stream, HopMessage(type=HopMessage.STATUS, status=to_proto_status(StatusCode.RESOURCE_LIMIT_EXCEEDED))
        )

    # ------------------------------------------------------------------ circuits

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        source = stream.muxed_conn.peer_id
        ip = _ip_of(stream)
        limits = self.service_limits
        why = None
        if self._circuits_by_peer[source] >= limits.circuits_per_peer:
            why = f"{limits.circuits_per_peer} circuits from this peer already"
        elif self._circuits_by_ip[ip] >= limits.circuits_per_ip:
            why = f"{limits.circuits_per_ip} circuits from {ip} already"
        elif not self._circuit_rate.take(ip):
            why = f"more than {limits.circuit_rate_per_ip} circuits per minute from {ip}"
        if why is not None:
            self.stats.circuits_refused += 1
            limited_event(log, "relay_circuit_refused", peer=str(source), ip=ip, reason=why)
            await self._send_status(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, why)
            await trio.sleep(0.2)  # let the status reach the peer before the reset
            await stream.reset()
            return
        self._circuits_by_peer[source] += 1
        self._circuits_by_ip[ip] += 1
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self._circuits_by_peer[source] -= 1
            self._circuits_by_ip[ip] -= 1
            if self._circuits_by_peer[source] <= 0:
                del self._circuits_by_peer[source]
            if self._circuits_by_ip[ip] <= 0:
                del self._circuits_by_ip[ip]

    async def _relay_data(
        self,
        src_stream: INetStream,
        dst_stream: INetStream,
        peer_id: ID,
        deadline: float | None = None,
        circuit_data_limit: list[int] | None = None,
    ) -> None:
        """Copy one direction of a circuit under the duration deadline and the shared byte budget.

        Replaces upstream's loop, which checks the duration only when data arrives (an
        idle circuit never expires) and retries reads of a reset stream three times.
        """
        # Both directions share circuit_data_limit: the first one to start counts the circuit.
        counts = circuit_data_limit is not None and len(circuit_data_limit) == 1
        if counts:
            circuit_data_limit.append(0)  # type: ignore[union-attr]
            self.stats.circuits_opened += 1
            self.stats.circuits_active += 1
        why = "closed"
        # Upstream's deadline is time.monotonic(); trio's clock has its own epoch.
        trio_deadline = float("inf") if deadline is None else trio.current_time() + (deadline - time.monotonic())
        try:
            with trio.move_on_at(trio_deadline) as scope:
                while True:
                    try:
                        data = await src_stream.read(_COPY_CHUNK)
                    except Exception:
                        break
                    if not data:
                        break
                    if circuit_data_limit is not None:
                        if len(data) > circuit_data_limit[0]:
                            why = "byte limit"
                            break
                        circuit_data_limit[0] -= len(data)
                    self.stats.bytes_relayed += len(data)
                    with trio.fail_after(self.write_timeout):
                        await dst_stream.write(data)
            if scope.cancelled_caught:
                why = "duration limit"
        except Exception:
            why = "write failed"
        finally:
            if counts:
                self.stats.circuits_active -= 1
            if why in ("byte limit", "duration limit"):
                limited_event(log, "relay_circuit_limit", peer=str(peer_id), reason=why)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                # A clean EOF is passed on (half-close); a limit or failure ends both ways.
                for stream in (dst_stream,) if why == "closed" else (src_stream, dst_stream):
                    try:
                        await (stream.close() if why == "closed" else stream.reset())
                    except Exception:
                        pass
            self._active_relays.pop(peer_id, None)

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "reservations": self.reservation_count(), **self.service_limits.__dict__}
