"""The relay pieces on loopback, in one process (fast): the upstream bugs we work around, and our limits.

The namespace tests (test_nat_relay.py) show the whole story through real NATs; these pin
each fix: AutoNAT's dial-back really dials, RESERVE cannot be made for another peer id,
reservations per IP are capped, an idle circuit is cut at the duration limit, and the
reservation keeper moves to the next relay when one dies.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.autonat.autonat import AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from node.net.host import build_host
from node.net.reachability import DialBackAutoNAT
from node.net.relay_client import Candidate, CircuitDialer, RelayError, RelayKeeper, reserve_on
from node.net.relay_service import LimitedRelay, RelayServiceLimits

LISTEN = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def running_host() -> AsyncIterator[object]:
    host = build_host(create_new_key_pair(), LISTEN)
    async with host.run(listen_addrs=[Multiaddr(a) for a in LISTEN]):
        yield host


def addr_of(host: object) -> str:
    return f"{host.get_addrs()[0]}/p2p/{host.get_id().to_base58()}"  # type: ignore[attr-defined]


async def connect(a: object, b: object) -> None:
    await a.connect(PeerInfo(b.get_id(), list(b.get_addrs())))  # type: ignore[attr-defined]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_nat_autonat_dial_back_really_dials() -> None:
    """Upstream's server 'dials back' with host.connect(), a no-op on the connection the request came on."""
    async with running_host() as server, running_host() as client:
        fixed = DialBackAutoNAT(server, serve=True)  # type: ignore[arg-type]
        asker = AutoNATService(client, serve=False)  # type: ignore[arg-type]
        await connect(client, server)
        unreachable = Multiaddr(f"/ip4/127.0.0.1/tcp/{closed_port()}").to_bytes()
        status, _ = await asker.query_server(server.get_id(), [unreachable])
        assert status == int(Message.E_DIAL_ERROR)  # nothing listens there: not reachable
        reachable = client.get_addrs()[0].to_bytes()
        status, addr = await asker.query_server(server.get_id(), [reachable])
        assert status == int(Message.OK) and addr == reachable
        # The upstream server on the same requests: "reachable" at a closed port.
        upstream = AutoNATService(server, serve=True)  # type: ignore[arg-type]
        assert fixed is not None and upstream is not None
        status, _ = await asker.query_server(server.get_id(), [unreachable])
        assert status == int(Message.OK)


async def test_relay_reserve_is_for_the_connection_peer_only_and_capped_per_ip() -> None:
    limits = RelayServiceLimits(reservations_per_ip=2)
    async with running_host() as relay_host:
        relay = LimitedRelay(relay_host, limits)
        async with background_trio_service(relay):
            async with running_host() as a, running_host() as b, running_host() as c:
                victim = create_new_key_pair()
                victim_id = ID.from_pubkey(victim.public_key)
                await connect(a, relay_host)
                # A RESERVE naming another peer id reserves for the sender, never for the named peer.
                stream = await a.new_stream(relay_host.get_id(), [TProtocol(HOP)])
                await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE,
                                                             peer=CircuitPeerId(id=victim_id.to_bytes())))
                reply = await read_delimited_msg(stream, HopMessage)
                assert reply.status == 100  # OK
                assert relay.resource_manager.get_reservation(victim_id) is None
                assert relay.resource_manager.get_reservation(a.get_id()) is not None
                # Two reservations from 127.0.0.1 at most (this test exempts nothing).
                await connect(b, relay_host)
                await reserve_on(b, relay_host.get_id().to_base58())
                await connect(c, relay_host)
                try:
                    await reserve_on(c, relay_host.get_id().to_base58())
                except RelayError as exc:
                    assert "limits are reached" in str(exc)
                else:
                    raise AssertionError("a third reservation from one IP was granted")
                assert relay.stats.reservations_refused == 1
                # Renewing one's own reservation is not a new one: still allowed at the cap.
                await reserve_on(b, relay_host.get_id().to_base58())


async def test_relay_idle_circuit_is_cut_at_the_duration_limit() -> None:
    """Upstream checks the duration only when data arrives: an idle circuit lived forever."""
    async with running_host() as relay_host, running_host() as home, running_host() as caller:
        relay = LimitedRelay(relay_host, RelayServiceLimits(circuit_duration=1))
        home_stop = LimitedRelay(home, RelayServiceLimits(), hop=False)
        caller_stop = LimitedRelay(caller, RelayServiceLimits(), hop=False)
        async with background_trio_service(relay), background_trio_service(home_stop), \
                background_trio_service(caller_stop):
            await connect(home, relay_host)
            await reserve_on(home, relay_host.get_id().to_base58())
            dialer = CircuitDialer(caller, caller_stop, addrs_of=lambda peer: [])
            await dialer.dial(f"{addr_of(relay_host)}/p2p-circuit/p2p/{home.get_id().to_base58()}")
            assert relay.stats.circuits_opened == 1
            with trio.fail_after(10):
                while relay.stats.circuits_active:
                    await trio.sleep(0.1)
            with trio.fail_after(10):  # and the relayed connection over it is gone on both ends
                while caller.get_network().connections.get(home.get_id()) or \
                        home.get_network().connections.get(caller.get_id()):
                    await trio.sleep(0.1)


async def test_relay_keeper_moves_to_the_next_relay_when_one_dies() -> None:
    async with running_host() as home:
        relays, scopes = [], []
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                host = build_host(create_new_key_pair(), LISTEN)
                scope = trio.CancelScope()
                scopes.append(scope)

                async def run(host=host, scope=scope, task_status=trio.TASK_STATUS_IGNORED) -> None:
                    with scope:
                        async with host.run(listen_addrs=[Multiaddr(a) for a in LISTEN]):
                            async with background_trio_service(LimitedRelay(host, RelayServiceLimits())):
                                task_status.started()
                                await trio.sleep_forever()

                await nursery.start(run)
                relays.append(host)
            changes: list[list[str]] = []
            keeper = RelayKeeper(home, home.get_id().to_base58(), want=1, check_interval=0.2,
                                 candidates=lambda: [Candidate(h.get_id().to_base58(), [addr_of(h)]) for h in relays],
                                 on_change=lambda: changes.append(keeper.circuit_addrs()))
            keeper.set_active(True)
            assert await keeper.tend()
            first = next(iter(keeper.reservations))
            assert first == relays[0].get_id().to_base58()
            assert keeper.circuit_addrs()[0].endswith(f"/p2p-circuit/p2p/{home.get_id().to_base58()}")
            scopes[0].cancel()  # the first relay dies
            with trio.fail_after(20):
                while list(keeper.reservations) != [relays[1].get_id().to_base58()]:
                    await keeper.tend()
                    await trio.sleep(0.2)
            assert keeper.moves == 1 and relays[1].get_id().to_base58() in keeper.circuit_addrs()[0]
            nursery.cancel_scope.cancel()
