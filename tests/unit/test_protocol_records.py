"""Signed capability records: forged, replayed and expired records are rejected."""

from __future__ import annotations

import msgspec
import pytest

import protocol as p

NOW = 1_800_000_000.0


def _record(identity: p.Identity, *, seq: int = 1, issued_at: float = NOW, ttl: float = 30.0, **kw) -> p.CapabilityRecord:
    return p.CapabilityRecord(peer_id=identity.peer_id, name="smol", seq=seq, issued_at=issued_at, ttl=ttl, **kw)


@pytest.fixture
def alice() -> p.Identity:
    return p.Identity.from_seed(b"a" * 32)


@pytest.fixture
def mallory() -> p.Identity:
    return p.Identity.from_seed(b"m" * 32)


def test_peer_id_matches_libp2p(alice):
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    key_pair = create_new_key_pair(alice.seed())
    assert ID.from_pubkey(key_pair.public_key).to_base58() == alice.peer_id
    assert alice.peer_id.startswith("12D3KooW")


def test_identity_round_trips_through_seed(alice):
    assert p.Identity.from_seed(alice.seed()).peer_id == alice.peer_id


def test_valid_record_verifies(alice):
    signed = p.sign_record(_record(alice), alice)
    assert p.verify_record(p.decode(p.encode(signed), p.SignedRecord), NOW).name == "smol"


def test_cannot_sign_for_someone_else(alice, mallory):
    with pytest.raises(ValueError):
        p.sign_record(_record(alice), mallory)


def test_forged_signature_rejected(alice, mallory):
    # Mallory signs a record that claims to be Alice's.
    payload = p.encode(_record(alice))
    forged = p.SignedRecord(payload=payload, signature=mallory.sign(b"/mosaic/cap-record/1\n" + payload))
    with pytest.raises(p.BadSignature):
        p.verify_record(forged, NOW)


def test_tampered_payload_rejected(alice):
    signed = p.sign_record(_record(alice, tags=("math",)), alice)
    tampered = p.encode(_record(alice, tags=("law",)))
    with pytest.raises(p.BadSignature):
        p.verify_record(p.SignedRecord(payload=tampered, signature=signed.signature), NOW)


def test_signature_without_domain_prefix_rejected(alice):
    payload = p.encode(_record(alice))
    with pytest.raises(p.BadSignature):
        p.verify_record(p.SignedRecord(payload=payload, signature=alice.sign(payload)), NOW)


def test_garbage_peer_id_rejected(alice):
    record = msgspec.structs.replace(_record(alice), peer_id="not-a-peer-id")
    payload = p.encode(record)
    with pytest.raises(p.InvalidPeerId):
        p.verify_record(p.SignedRecord(payload=payload, signature=alice.sign(payload)), NOW)


def test_expired_record_rejected(alice):
    signed = p.sign_record(_record(alice, issued_at=NOW - 100, ttl=30), alice)
    with pytest.raises(p.ExpiredRecord):
        p.verify_record(signed, NOW)


def test_record_from_the_future_rejected(alice):
    signed = p.sign_record(_record(alice, issued_at=NOW + 3600), alice)
    with pytest.raises(p.ExpiredRecord):
        p.verify_record(signed, NOW)


def test_record_book_rejects_replay_and_keeps_newest(alice):
    book = p.RecordBook()
    old = p.sign_record(_record(alice, seq=5), alice)
    new = p.sign_record(_record(alice, seq=6, tags=("v2",)), alice)
    assert book.offer(old, NOW).is_new
    assert book.offer(new, NOW).is_new
    with pytest.raises(p.ReplayedRecord):
        book.offer(old, NOW)
    assert book.get(alice.peer_id).tags == ("v2",)
    assert not book.offer(new, NOW).is_new  # a duplicate is not an error


def test_record_book_expiry(alice, mallory):
    book = p.RecordBook()
    book.offer(p.sign_record(_record(alice, ttl=10), alice), NOW)
    book.offer(p.sign_record(_record(mallory, ttl=100), mallory), NOW)
    assert book.expire(NOW + 50) == [alice.peer_id]
    assert [r.peer_id for r in book.records()] == [mallory.peer_id]


def test_record_book_checks_direct_sender(alice, mallory):
    book = p.RecordBook()
    with pytest.raises(p.InvalidValue):
        book.offer(p.sign_record(_record(alice), alice), NOW, from_peer=mallory.peer_id)
