"""Attack 8 (issue 22): one identity fills the DHT value store with valid entries.

Each ``/pk/<peer id>`` entry is a fresh key's own public key, so every one is
valid; before the fix 4,092 of them from one connection filled the shared
4,096-entry cap in 11 s and an honest newcomer's record was refused.  Now new
keys are charged to the peer that PUT them (``MAX_DHT_VALUES_PER_PEER``), so the
attacker's puts past its quota are refused and the newcomer's record is stored.

CI's small form shrinks the victim's store to ``STORE`` entries (each refused PUT
costs the attacker a KAD stream, ~20 ms on a loaded box) and fills it but for 4;
``MOSAIC_ATTACK_DHT_STORE=4096`` runs the issue's size (80 s on a loaded 2-core box).
"""

from __future__ import annotations

import os

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from node.net.dht import record_key
from node.net.dht_quota import MAX_DHT_VALUES_PER_PEER, PeerQuota
from node.net.discovery import add_to_routing_table
from tests.cluster.harness import in_process_cluster

from .adversary import adversary

STORE = int(os.environ.get("MOSAIC_ATTACK_DHT_STORE", str(8 * MAX_DHT_VALUES_PER_PEER)))
# What the attack wrote: the whole store but for the few entries the victim held.
PUTS = STORE - 4


def public_key_entries(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` valid ``/pk/`` entries: each a fresh key's public key under its own peer id."""
    out = []
    for _ in range(count):
        public = create_new_key_pair().public_key
        out.append((f"/pk/{ID.from_pubkey(public).to_bytes().hex()}".encode(), public.serialize()))
    return out


@pytest.mark.timeout(120)
async def test_one_identity_cannot_fill_the_dht_store() -> None:
    with trio.fail_after(110):
        async with in_process_cluster(1) as cluster, adversary() as evil:
            victim = cluster.nodes[0]
            victim_id = ID.from_base58(victim.peer_id)
            for capped in victim.dht.validator._validators.values():  # the store's size, as in the docstring
                capped.max_values = STORE
            await evil.host.connect(_info(victim))
            await evil.dht.add_peer(victim_id, skip_server_mode_check=True)
            await add_to_routing_table(victim.dht, evil.peer_id)
            entries = public_key_entries(PUTS)
            stored = 0
            limiter = trio.CapacityLimiter(8)

            async def put(key: bytes, value: bytes) -> None:
                nonlocal stored
                async with limiter:
                    with trio.move_on_after(10):
                        if await evil.dht.value_store._store_at_peer(victim_id, key, value):
                            stored += 1

            async with trio.open_nursery() as nursery:
                for key, value in entries:
                    nursery.start_soon(put, key, value)
            store = victim.dht.value_store.store
            held = sum(1 for key, _ in entries if key in store)
            assert held <= MAX_DHT_VALUES_PER_PEER, f"one identity holds {held} of {PUTS} entries"

            # An honest newcomer joins: its record reaches the victim's store.
            newcomer = await cluster.add(1)
            key = record_key(newcomer.peer_id).encode()
            with trio.fail_after(30):
                while victim.dht.value_store.get(key) is None:
                    await newcomer.announce_now()
                    await trio.sleep(0.5)


def test_quota_counts_live_entries_per_sender() -> None:
    from node.net import dht_quota

    store: dict[bytes, object] = {}
    quota = PeerQuota(store, per_peer=2)
    token = dht_quota._sender.set("attacker")
    try:
        for key in (b"/pk/a", b"/pk/b"):
            quota.charge(key)
            store[key] = object()
        with pytest.raises(dht_quota.DHTQuotaExceeded):
            quota.charge(b"/pk/c")
        quota.charge(b"/pk/a")  # an update of a stored key is free
        del store[b"/pk/a"]  # expired or pruned: the slot is free again
        quota.charge(b"/pk/c")
    finally:
        dht_quota._sender.reset(token)
    quota.charge(b"/pk/d")  # this node's own puts (no sender) are not charged


def _info(node):
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    return info_from_p2p_addr(Multiaddr(node.full_multiaddrs()[0]))
