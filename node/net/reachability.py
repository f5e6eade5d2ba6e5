"""Is this node reachable from the internet?  AutoNAT (py-libp2p's ``host/autonat``), fixed.

Every node answers AutoNAT dial-back requests; a node whose ``net.reachability`` is
``auto`` asks the peers it is connected to (bootstrap peers first) to dial it back
on its direct addresses, and becomes ``public`` or ``private`` once
``net.autonat_confirmations`` servers agree (fewer when fewer servers answered: a
small network has one bootstrap node).  An operator who knows can set ``public`` or
``private`` and skip the probing.

Upstream pitfalls (read in 0.8.1, worked around here, listed in docs/operators.md):

* The server's dial-back is ``host.connect()``, which returns at once when a
  connection to the peer exists, and the request itself arrived on one: every
  requester whose advertised IP equals its observed IP was reported reachable,
  firewalled or not.  :class:`DialBackAutoNAT` dials a *fresh* TCP connection to the
  advertised address and completes a Noise handshake with the expected peer id on
  it, outside the swarm, then closes it.
* ``check_reachability()`` records a server that does not speak AutoNAT (or is
  slow) as "dial-back failed", so a node with non-AutoNAT peers would call itself
  private.  We count only servers that answered.
* The client advertises ``host.get_addrs()``, i.e. ``/ip4/0.0.0.0/...`` for a
  wildcard listener, which the server refuses (no IP to match).  We send concrete
  addresses.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio
from libp2p.abc import IHost
from libp2p.host.autonat.autonat import AutoNATService, AutoNATStatus
from libp2p.host.autonat.pb.autonat_pb2 import Message
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ..logs import event, get_logger

log = get_logger("net.reachability")

DIAL_BACK_TIMEOUT = 5.0
QUERY_TIMEOUT = 15.0
MAX_SERVERS = 5
STATES = ("unknown", "public", "private")


def on_our_lan(ip: str | None, own_addrs: list[str]) -> bool:
    """Whether a peer at ``ip`` shares a network with us (loopback, or one of our /24 or /64).

    Such a peer dials us on our LAN address and would report us reachable: its AutoNAT
    verdict says nothing about the internet (a node behind a home router whose LAN
    neighbour runs Mosaic called itself public before this check).
    """
    import ipaddress

    if not ip:
        return True
    try:
        peer = ipaddress.ip_address(ip)
    except ValueError:
        return True
    if peer.is_loopback:
        return True
    for addr in own_addrs:
        for proto in ("/ip4/", "/ip6/"):
            if addr.startswith(proto):
                try:
                    own = ipaddress.ip_address(addr[len(proto):].split("/")[0])
                except ValueError:
                    continue
                prefix = 24 if own.version == 4 else 64
                if own.version == peer.version and peer in ipaddress.ip_network(f"{own}/{prefix}", strict=False):
                    return True
    return False


class DialBackAutoNAT(AutoNATService):
    """AutoNAT whose server really dials back (see the module doc)."""

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        network = self.host.get_network()
        for raw in addrs[:4]:
            try:
                addr = Multiaddr(raw)
                if "/p2p-circuit" in str(addr):
                    continue
                transport = network.transport_manager.transport_for_dialing(addr)  # type: ignore[attr-defined]
                if transport is None:
                    continue
                with trio.fail_after(DIAL_BACK_TIMEOUT):
                    conn = await transport.dial(addr)
                    try:
                        secured = await network.upgrader.upgrade_security(conn, True, peer_id)  # type: ignore[attr-defined]
                        await secured.close()
                    finally:
                        try:
                            await conn.close()
                        except Exception:
                            pass
                return bytes(raw)
            except Exception:
                continue
        return None


class Reachability:
    """The node's view of itself: ``unknown``, ``public`` or ``private``, and why."""

    def __init__(self, host: IHost, *, mode: str, confirmations: int, own_addrs: Callable[[], list[str]],
                 servers: Callable[[], list[str]], interval: float,
                 on_change: Callable[[str], None] = lambda state: None) -> None:
        if mode not in ("auto", "public", "private"):
            raise ValueError(f"net.reachability must be auto, public or private, not {mode!r}")
        self.host = host
        self.mode = mode
        self.autonat = DialBackAutoNAT(host, serve=True, confirmations=confirmations)  # type: ignore[arg-type]
        self.confirmations = confirmations
        self.own_addrs = own_addrs
        self.servers = servers
        self.interval = interval
        self.on_change = on_change
        self.state = mode if mode != "auto" else "unknown"
        self.checked_at = 0.0
        self.answers: dict[str, str] = {}  # server -> "reachable" / "unreachable" / its refusal text

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.mode != "auto":
            return
        while True:
            await self.check()
            # Undecided: ask again soon (a fresh node has few peers); decided: every interval.
            await trio.sleep(self.interval if self.state != "unknown" else min(self.interval, 2.0))

    async def check(self) -> str:
        addrs = [a.split("/p2p/")[0] for a in self.own_addrs() if "/p2p-circuit" not in a]
        raw = []
        for text in dict.fromkeys(addrs):
            try:
                raw.append(Multiaddr(text).to_bytes())
            except Exception:
                continue
        servers = self.servers()[:MAX_SERVERS]
        if not raw or not servers:
            return self.state
        results: dict[ID, bool] = {}

        async def ask(server: str) -> None:
            try:
                status, _ = await self.autonat.query_server(ID.from_base58(server), raw, timeout=QUERY_TIMEOUT)
            except Exception as exc:  # not an AutoNAT server, slow or gone: no verdict
                self.answers[server] = f"no answer ({type(exc).__name__})"
                return
            reachable = status == int(Message.OK)
            results[ID.from_base58(server)] = reachable
            self.answers[server] = "reachable" if reachable else f"unreachable (status {status})"

        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(ask, server)
        self.checked_at = time.time()
        if not results:
            return self.state
        self.autonat.dial_results = results
        self.autonat.confirmations = max(1, min(self.confirmations, len(results)))
        self.autonat.update_status()
        verdicts = {AutoNATStatus.PUBLIC: "public", AutoNATStatus.PRIVATE: "private"}
        state = verdicts.get(self.autonat.get_status(), "unknown")
        if state != self.state:
            event(log, "reachability", state=state, was=self.state, servers=len(results))
            self.state = state
            self.on_change(state)
        return self.state

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state, "mode": self.mode, "checked_at": self.checked_at, "answers": dict(self.answers)}
