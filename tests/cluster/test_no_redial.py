"""A peer that leaves without a record is forgotten, so nothing dials it again (issue 21, item 4).

py-libp2p's auto-connector redials every peerstore peer that has addresses, 60 s after it
disconnected and then every 10 s while the node holds few connections: a CLI client that exited
(``node peers --connect``) was redialled forever, one error line each time.  The node forgets
such a peer when its last connection closes (``app.py``, ``net/discovery.forget_peer``).

In process, with the library's timers shortened (1 s after a disconnect, a poll every 0.5 s),
the same auto-connector code runs against a real node, and every dial the node's swarm makes to
the departed client is counted.  The same count then sees dials once the client's address is put
back into the peerstore, so a watch that hears nothing is not deaf.  The CLI form with the
library's real timers (a 100 s watch) is ``test_newcomer_cli``'s ``soak`` test.
"""

from __future__ import annotations

import time

import pytest
import trio
from libp2p.peer.id import ID

from node.net.discovery import dial
from node.net.host import build_host, disconnect_all, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from protocol import Identity
from tests.cluster.harness import in_process_cluster

pytestmark = pytest.mark.timeout(60)

BACKOFF_S = 1.0  # the auto-connector's wait after a disconnect (60 s in the library)
POLL_S = 0.5  # its poll while below its minimum of connections (10 s in the library)
WATCH_S = 4 * (BACKOFF_S + POLL_S)


class Dials:
    """Counts the connection attempts ``swarm`` makes to ``peer_id``: an address dialled, whoever asked
    (auto-connector, a DHT walk, pubsub).  A dial of a peer without addresses reaches no network."""

    def __init__(self, swarm: object, peer_id: ID) -> None:
        self.count = 0
        original = swarm._dial_addr_single_attempt  # type: ignore[attr-defined]

        async def counting(addr: object, peer: ID, *args: object, **kwargs: object) -> object:
            if peer == peer_id:
                self.count += 1
            return await original(addr, peer, *args, **kwargs)

        swarm._dial_addr_single_attempt = counting  # type: ignore[attr-defined]

    async def watch(self, seconds: float, *, until_one: bool = False) -> int:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until_one and self.count):
            await trio.sleep(0.1)
        return self.count


async def test_a_client_that_left_is_not_redialled_until_its_address_comes_back() -> None:
    async with in_process_cluster() as cluster:
        node = await cluster.add(0)
        swarm = node.host.get_network()
        swarm.auto_connector._disconnect_backoff = BACKOFF_S  # type: ignore[attr-defined]
        swarm.auto_connector._critical_check_interval = POLL_S  # type: ignore[attr-defined]

        # A CLI client comes, asks, and goes (as `node peers --connect` does).
        listen = ["/ip4/127.0.0.1/tcp/0"]
        client = build_host(libp2p_key_pair(Identity.generate()), listen)
        client_id = client.get_id()
        dials = Dials(swarm, client_id)
        async with client.run(listen_addrs=listen_multiaddrs(listen)):
            await dial(client, node.full_multiaddrs()[0], timeout=10)
            addr = next(a for a in client.get_addrs() if "/tcp/" in str(a))
            with trio.fail_after(10):
                # Connected, and identify told the node where the client listens: what gets redialled.
                while client_id not in swarm.connections or not _addrs(node, client_id):  # type: ignore[attr-defined]
                    await trio.sleep(0.05)
            await disconnect_all(client)  # in process, leaving the host's context does not close them
        with trio.fail_after(10):
            while client_id in swarm.connections:  # type: ignore[attr-defined]
                await trio.sleep(0.05)
        assert await dials.watch(WATCH_S) == 0, "the node redialled a client that left"
        assert _addrs(node, client_id) == []  # forgotten, not merely not dialled yet

        # Not deaf: with its address back, the same auto-connector dials it within a poll or two.
        node.host.get_peerstore().add_addrs(client_id, [addr], 3600)
        assert await dials.watch(WATCH_S, until_one=True) >= 1, "the watch saw no dial"


def _addrs(node: object, peer_id: ID) -> list[object]:
    """The addresses ``node``'s peerstore holds for ``peer_id`` (none when it forgot the peer)."""
    try:
        return list(node.host.get_peerstore().addrs(peer_id))  # type: ignore[attr-defined]
    except Exception:  # py-libp2p raises PeerStoreError for a peer it does not know
        return []
