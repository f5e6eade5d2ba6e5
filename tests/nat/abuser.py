"""A misbehaving peer for the NAT tests, run inside a namespace: ``python -m tests.nat.abuser RELAY TARGET``.

With fresh identities from one IP it (1) reserves on the relay as many times as it can,
(2) floods circuits to ``TARGET`` (a peer holding a reservation there), (3) dials a
circuit to a peer that holds no reservation on the relay, the way a record advertising a
circuit "through" a relay it never reserved on would be dialled.  Prints one JSON line.
"""

from __future__ import annotations

import json
import sys

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from node.net.host import build_host
from node.net.relay_client import CircuitDialer, RelayError, reserve_on
from node.net.relay_service import LimitedRelay, RelayServiceLimits
from node.net.discovery import dial

IDENTITIES = 6
FLOOD = 12


async def main(relay_addr: str, target: str) -> dict[str, object]:
    relay = relay_addr.rsplit("/p2p/", 1)[1]
    out: dict[str, object] = {"granted": 0, "refused": [], "flood_ok": 0, "flood_refused": [], "unreserved": ""}
    async with trio.open_nursery() as nursery:
        hosts = []
        for _ in range(IDENTITIES):
            host = build_host(create_new_key_pair(), ["/ip4/0.0.0.0/tcp/0"])
            await nursery.start(_run_host, host)
            hosts.append(host)
        for host in hosts:  # (1) every identity reserves
            try:
                await dial(host, relay_addr)
                await reserve_on(host, relay)
                out["granted"] = int(out["granted"]) + 1  # type: ignore[call-overload]
            except Exception as exc:
                out["refused"].append(str(exc))  # type: ignore[union-attr]
        stop_side = LimitedRelay(hosts[0], RelayServiceLimits(), hop=False)
        dialer = CircuitDialer(hosts[0], stop_side, addrs_of=lambda peer: [], dial_timeout=10)
        # (3) a circuit to a brand-new identity, which holds no reservation on the relay (before the
        # flood, whose open circuits would hit the per-peer cap first).
        stranger = build_host(create_new_key_pair(), ["/ip4/0.0.0.0/tcp/0"])
        await nursery.start(_run_host, stranger)
        try:
            await dialer.dial(f"{relay_addr}/p2p-circuit/p2p/{stranger.get_id().to_base58()}")
            out["unreserved"] = "connected"
        except RelayError as exc:
            out["unreserved"] = str(exc)
        # (2) the same identity floods circuits to the target.

        async def one() -> None:
            try:
                await dialer.transport.dial_peer_info(_info(target), relay_info=_info(relay, relay_addr))
                out["flood_ok"] = int(out["flood_ok"]) + 1  # type: ignore[call-overload]
            except Exception as exc:
                out["flood_refused"].append(str(exc)[:200])  # type: ignore[union-attr]

        async with trio.open_nursery() as flood:
            for _ in range(FLOOD):
                flood.start_soon(one)
        nursery.cancel_scope.cancel()
    return out


def _info(peer: str, addr: str | None = None):  # type: ignore[no-untyped-def]
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    return PeerInfo(ID.from_base58(peer), [Multiaddr(addr.rsplit("/p2p/", 1)[0])] if addr else [])


async def _run_host(host, *, task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
    from multiaddr import Multiaddr

    async with host.run(listen_addrs=[Multiaddr("/ip4/0.0.0.0/tcp/0")]):
        task_status.started()
        await trio.sleep_forever()


if __name__ == "__main__":
    result = trio.run(main, sys.argv[1], sys.argv[2])
    print(json.dumps(result), flush=True)
