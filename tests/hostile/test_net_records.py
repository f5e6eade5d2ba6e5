"""Forged, tampered, replayed and expired records arriving by gossip and by the DHT.

The attacker is a real libp2p host with GossipSub and a KadDHT that accepts
anything under /mosaic-cap/ (it skips our validator); the victims are real
nodes.  Unit tests of protocol.records cover the checks themselves; these show
the network paths run them.
"""

from __future__ import annotations

import time

import trio
from libp2p.peer.id import ID

from node.net.dht import fetch_record, record_key
from node.net.discovery import add_to_routing_table, dial, refresh_routing_table
from protocol import (
    CAPABILITIES_TOPIC,
    CapabilityRecord,
    Identity,
    RecordBatch,
    SignedRecord,
    decode,
    encode,
    sign_record,
)
from protocol.records import _SIGNING_DOMAIN

from ..attacks.adversary import adversary
from ..cluster.harness import in_process_cluster


def _record(identity: Identity, *, peer_id: str | None = None, name: str = "evil", issued_at: float | None = None, ttl: float = 60.0) -> CapabilityRecord:
    now = time.time() if issued_at is None else issued_at
    return CapabilityRecord(peer_id=peer_id or identity.peer_id, name=name, seq=int(now * 1000), issued_at=now, ttl=ttl)


def _forge(record: CapabilityRecord, signer: Identity) -> SignedRecord:
    """Sign ``record`` with a key that is not the one its peer id names."""
    payload = encode(record)
    return SignedRecord(payload=payload, signature=signer.sign(_SIGNING_DOMAIN + payload))


def _tamper(signed: SignedRecord, **changes: object) -> SignedRecord:
    """Keep the genuine signature but change the payload it covers."""
    record = decode(signed.payload, CapabilityRecord)
    fields = {f: getattr(record, f) for f in record.__struct_fields__ if f != "v"}
    fields.update(changes)
    return SignedRecord(payload=encode(CapabilityRecord(**fields)), signature=signed.signature)


async def test_forged_replayed_and_expired_gossip_never_enters_a_registry() -> None:
    with trio.fail_after(60):
        async with in_process_cluster(3, record_ttl=60.0, announce_interval=30.0) as cluster:
            nodes = cluster.nodes
            with trio.fail_after(10):
                for node in nodes:
                    await node.registry.wait_for(lambda r: len(r) == 3)
            victim = nodes[1]
            old = victim.signed_record()
            await victim.announce_now()
            current = victim.own_record().seq
            with trio.fail_after(5):
                await nodes[0].registry.wait_for(lambda r: r.get(victim.peer_id).seq == current)

            forged_by = Identity.generate()
            attacks = [
                # (what it is, the batch, the registry counter it must bump on the node it reaches)
                ("replay", old, "gossip:ReplayedRecord"),  # the victim's genuine, superseded record
                ("forged", _forge(_record(forged_by, peer_id=victim.peer_id), forged_by), "gossip:BadSignature"),
                ("tampered", _tamper(victim.signed_record(), name="evil", seq=current + 10), "gossip:BadSignature"),
                ("expired", sign_record(_record(forged_by, name="evil-expired", issued_at=time.time() - 3600, ttl=10.0), forged_by), "gossip:ExpiredRecord"),
            ]
            for what, signed, counter in attacks:
                # A fresh attacker per attack: GossipSub's score gate mutes a peer after an
                # invalid message, which would hide the later attacks from the node.
                before = nodes[0].registry.rejected[counter]
                async with adversary() as attacker:
                    host, pubsub = attacker.host, attacker.pubsub
                    await dial(host, nodes[0].full_multiaddrs()[0])
                    await pubsub.subscribe(CAPABILITIES_TOPIC)
                    await pubsub.wait_for_subscription(nodes[0].host.get_id(), CAPABILITIES_TOPIC, timeout=10)
                    # The first publish can race the attacker's own pubsub stream setup (and
                    # GossipSub is lossy, B3): repeat it until the node has seen it.
                    with trio.fail_after(5):
                        while nodes[0].registry.rejected[counter] == before:
                            await pubsub.publish(CAPABILITIES_TOPIC, encode(RecordBatch(records=(signed,))))
                            with trio.move_on_after(0.3):
                                await nodes[0].registry.wait_for(lambda r: r.rejected[counter] > before)
            # Batches that fail verification are not relayed, so no other node even sees them.
            await trio.sleep(1.5)  # a relay would have arrived by now (gossip latency ~10 ms)
            for node in nodes:
                assert node.registry.peer_ids() == {n.peer_id for n in nodes}
                assert node.registry.get(victim.peer_id).name == "node-1"
                assert node.registry.get(victim.peer_id).seq >= current
                assert not any(r.name.startswith("evil") for r in node.registry.all())
            for node in nodes[1:]:
                assert node.registry.rejected["gossip:BadSignature"] == 0


async def test_forged_dht_values_are_refused_and_never_read_back() -> None:
    with trio.fail_after(60):
        async with in_process_cluster(3, record_ttl=60.0) as cluster, adversary() as attacker:
            me, host, dht = attacker.identity, attacker.host, attacker.dht
            nodes = cluster.nodes
            with trio.fail_after(10):
                for node in nodes:
                    await node.registry.wait_for(lambda r: len(r) == 3)
            victim = nodes[1]
            genuine_seq = victim.own_record().seq
            for node in nodes:
                await dial(host, node.full_multiaddrs()[0])
                await dht.add_peer(ID.from_base58(node.peer_id), skip_server_mode_check=True)
                # The attacker is a DHT server the nodes route through (anyone can be one).
                await add_to_routing_table(node.dht, host.get_id().to_base58())
            stranger = Identity.generate()
            fake_key = record_key(stranger.peer_id)
            forged_stranger = _forge(_record(me, peer_id=stranger.peer_id, name="evil-stranger"), me)
            tampered_victim = _tamper(victim.signed_record(), name="evil", seq=genuine_seq + 1_000_000)
            # PUT_VALUE to every node: each one's validator refuses (our attacker stores them locally).
            await dht.put_value(fake_key, encode(forged_stranger))
            await dht.put_value(record_key(victim.peer_id), encode(tampered_victim))
            # Same key, genuine signature of the *stranger* but stored under the victim's key.
            mislabeled = sign_record(_record(stranger, name="evil-mislabeled"), stranger)
            await dht.value_store._store_at_peer(ID.from_base58(nodes[2].peer_id), record_key(victim.peer_id).encode(), encode(mislabeled))

            for node in nodes:
                assert node.dht.value_store.get(fake_key.encode()) is None
                held = node.dht.value_store.get(record_key(victim.peer_id).encode())
                # Either no copy yet (republish pending) or the genuine one: never the attacker's.
                assert held is None or decode(decode(held.value, SignedRecord).payload, CapabilityRecord).name == "node-1"

            # GET: the attacker does serve its forged copies (checked here with a raw GET)...
            attacker_id = host.get_id()
            raw = await nodes[0].dht.value_store._get_from_peer(attacker_id, fake_key.encode(), return_record=True)
            assert raw is not None and decode(raw.value, SignedRecord) == forged_stranger
            # ...and every reader discards them.
            for node in nodes:
                assert await fetch_record(node.dht, stranger.peer_id) is None
                best = await fetch_record(node.dht, victim.peer_id)
                assert best is not None
                assert decode(best.payload, CapabilityRecord).name == "node-1"
                await refresh_routing_table(node.dht)
                await node.sync_from_dht()
                assert stranger.peer_id not in node.registry
                assert node.registry.get(victim.peer_id).name == "node-1"
                assert not any(r.name.startswith("evil") for r in node.registry.all())
