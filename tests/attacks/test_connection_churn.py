"""Attack 1 (issue 22): a permanent lockout after ~250 short inbound connections.

py-libp2p 0.8.1 keeps an inbound slot (one of max_connections - min_connections =
250) for every inbound connection until the host stops, even after the
connection closed (node/net/inbound_slots.py has the details).  Fresh identities
that connect and hang up one at a time (no per-IP cap engages) used up the 250
in seconds, and from then on every inbound connection was refused, for good.
The node now gives the slot back when the connection closes: after more churned
connections than there are slots, a newcomer still connects and is served.
"""

from __future__ import annotations

import pytest
import trio

from node.net.discovery import connected_peers, dial
from node.net.exchange import fetch_table
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from protocol import Identity, decode
from tests.attacks.adversary import LOOPBACK, churn
from tests.cluster.harness import in_process_cluster

# More than py-libp2p's 250 inbound slots (300 max connections - 50 min connections).
CHURNED = 300


@pytest.mark.timeout(90)
async def test_node_accepts_newcomers_after_hundreds_of_churned_connections() -> None:
    with trio.fail_after(80):
        async with in_process_cluster() as cluster:
            victim = await cluster.add(0)
            addr = victim.full_multiaddrs()[0]
            failed = await churn(addr, CHURNED)
            assert failed == 0, f"{failed} of {CHURNED} churned connections were refused"

            with trio.fail_after(10):  # every churned connection is gone from the node
                while len(connected_peers(victim.host)) > 0:
                    await trio.sleep(0.1)

            newcomer = build_host(libp2p_key_pair(Identity.generate()), LOOPBACK)
            async with newcomer.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
                await dial(newcomer, addr)  # refused (SwarmDialAllFailedError) before the fix
                table = await fetch_table(newcomer, victim.peer_id, None)
                assert any(decode(signed.payload).peer_id == victim.peer_id for signed in table)
