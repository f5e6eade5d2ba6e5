"""Attack 3 (issue 12): DHT memory exhaustion and log flooding.

py-libp2p stores values under any namespace without a validator: 200 puts of
1000 KiB under a made-up namespace added 200 MiB to a node, kept 24 h, and
rejected puts were logged with the whole value in hex.  Now only validated
namespaces are stored, each value and the entry count are capped, and
rejections are logged briefly and rate-limited.
"""

from __future__ import annotations

import io
import logging
import os

import trio
from libp2p.peer.id import ID

from node.logs import line_handler
from node.net.dht import (
    MAX_DHT_VALUE,
    CapabilityRecordValidator,
    Capped,
    DHTValueRefused,
    record_key,
)
from node.net.discovery import add_to_routing_table
from protocol import Identity
from tests.cluster.harness import in_process_cluster

from .adversary import adversary

PUTS = int(os.environ.get("MOSAIC_ATTACK_DHT_PUTS", "20"))
BIG = b"\xab" * (1000 * 1024)


async def test_dht_stores_only_validated_namespaces_within_caps() -> None:
    logged = io.StringIO()
    handler = line_handler(logged)
    libp2p, mosaic = logging.getLogger("libp2p"), logging.getLogger("mosaic")
    saved = libp2p.level, mosaic.level, libp2p.propagate
    libp2p.setLevel(logging.WARNING)
    mosaic.setLevel(logging.INFO)
    libp2p.propagate = False
    libp2p.addHandler(handler)
    mosaic.addHandler(handler)
    try:
        with trio.fail_after(90):
            async with in_process_cluster(1, record_ttl=60.0) as cluster, adversary() as evil:
                victim = cluster.nodes[0]
                victim_id = ID.from_base58(victim.peer_id)
                before = len(victim.dht.value_store.store)
                await evil.host.connect(_info(victim))
                await evil.dht.add_peer(victim_id, skip_server_mode_check=True)
                await add_to_routing_table(victim.dht, evil.peer_id)
                keys = [f"/junk/{i}" for i in range(PUTS)] + ["plain-key", record_key(Identity.generate().peer_id)]
                for key in keys:
                    with trio.move_on_after(10):
                        await evil.dht.value_store._store_at_peer(victim_id, key.encode(), BIG)
                store = victim.dht.value_store.store
                assert not [k for k in store if not k.startswith((b"/mosaic-cap/", b"/pk/", b"/ipns/"))]
                assert all(len(record.value) <= MAX_DHT_VALUE for record, _ in store.values())
                assert len(store) <= before + 1  # at most the victim's own record appeared meanwhile
                # The node still works: its own record is stored and readable.
                await victim.announce_now()
                assert victim.dht.value_store.get(record_key(victim.peer_id).encode()) is not None
    finally:
        libp2p.removeHandler(handler)
        mosaic.removeHandler(handler)
        libp2p.setLevel(saved[0])
        mosaic.setLevel(saved[1])
        libp2p.propagate = saved[2]
    text = logged.getvalue()
    # ~24 MiB of refused values: the log says so in a few short lines, never the values.
    assert len(text) < 64 * 1024, f"{len(text)} bytes of logs"
    assert "abababab" * 64 not in text


def _info(node):
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    return info_from_p2p_addr(Multiaddr(node.full_multiaddrs()[0]))


def test_store_full_refuses_new_keys_but_not_updates() -> None:
    store: dict[bytes, object] = {b"/mosaic-cap/a": object(), b"/mosaic-cap/b": object()}
    capped = Capped(CapabilityRecordValidator(), store, own_key="/mosaic-cap/mine", max_values=2)
    try:
        capped.validate("/mosaic-cap/c", b"x")
    except DHTValueRefused as exc:
        assert "2 entries" in str(exc)
    else:
        raise AssertionError("a new key was accepted into a full store")
    # Existing keys and our own key get past the count cap (and then meet the record validator).
    for key in ("/mosaic-cap/a", "/mosaic-cap/mine"):
        try:
            capped.validate(key, b"x")
        except DHTValueRefused:
            raise AssertionError(f"{key} refused for the count cap") from None
        except Exception:
            pass  # b"x" is no valid record: the inner validator refuses it
