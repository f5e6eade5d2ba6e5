"""Signing, verifying and de-duplicating capability records.

A record is trusted only if (1) its signature verifies against the key
embedded in its own ``peer_id``, (2) it is not expired (issue time + TTL, with
a small clock-skew allowance), and (3) its ``seq`` is not lower than the
newest record already accepted from that peer (replay protection).  The
:class:`RecordBook` holds the state for (3); it is pure and takes ``now`` as an
argument, so tests control time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import decode, encode
from .errors import ExpiredRecord, InvalidValue, ReplayedRecord
from .identity import Identity, verify_signature
from .messages import CapabilityRecord, SignedRecord

# Domain separation: a signature over a record can never be replayed as a
# signature over some other kind of payload, and vice versa.
_SIGNING_DOMAIN = b"/mosaic/cap-record/1\n"

# Clocks on different machines disagree; allow this much in either direction.
MAX_CLOCK_SKEW = 30.0
# Seconds any record is kept after it was issued, whatever TTL it claims (the message type
# allows 24 h, which an attacker's records would use).  Nodes re-announce well before.
MAX_RECORD_TTL = 3600.0


def sign_record(record: CapabilityRecord, identity: Identity) -> SignedRecord:
    if record.peer_id != identity.peer_id:
        raise ValueError("a node can only sign its own capability record")
    payload = encode(record)
    return SignedRecord(payload=payload, signature=identity.sign(_SIGNING_DOMAIN + payload))


def verify_record(signed: SignedRecord, now: float) -> CapabilityRecord:
    """Return the record if its signature and lifetime check out, else raise."""
    record = decode(signed.payload, CapabilityRecord)
    verify_signature(record.peer_id, _SIGNING_DOMAIN + signed.payload, signed.signature)
    if record.issued_at > now + MAX_CLOCK_SKEW:
        raise ExpiredRecord(f"record of {record.peer_id[-8:]} is issued {record.issued_at - now:.0f}s in the future")
    if record.expires_at() + MAX_CLOCK_SKEW < now:
        raise ExpiredRecord(f"record of {record.peer_id[-8:]} expired {now - record.expires_at():.0f}s ago")
    return record


@dataclass(frozen=True, slots=True)
class Accepted:
    record: CapabilityRecord
    is_new: bool  # False: same seq as the copy we hold (a duplicate from gossip or the DHT)


class RecordBook:
    """Newest verified record per peer; rejects replays and drops expired entries.

    ``max_ttl`` caps how long any record is kept after it was issued, whatever
    TTL its issuer wrote (an attacker's records would otherwise live 24 h).
    """

    def __init__(self, *, max_ttl: float | None = None) -> None:
        self._records: dict[str, CapabilityRecord] = {}
        self.max_ttl = max_ttl

    def expires_at(self, record: CapabilityRecord) -> float:
        """When ``record`` leaves the book: its own expiry, or ``issued_at + max_ttl`` if sooner."""
        if self.max_ttl is None:
            return record.expires_at()
        return min(record.expires_at(), record.issued_at + self.max_ttl)

    def offer(self, signed: SignedRecord, now: float, *, from_peer: str | None = None) -> Accepted:
        """Verify and store ``signed``.

        ``from_peer``, when given, is the peer that *sent* the record over a
        direct stream; it must be the record's issuer.  Gossip and DHT relay
        other peers' records, so they pass ``None``.
        """
        record = verify_record(signed, now)
        if from_peer is not None and from_peer != record.peer_id:
            raise InvalidValue("record was sent by a peer other than its issuer")
        held = self._records.get(record.peer_id)
        if held is not None:
            if record.seq < held.seq:
                raise ReplayedRecord(f"seq {record.seq} < {held.seq} already held for {record.peer_id[-8:]}")
            if record.seq == held.seq:
                return Accepted(held, is_new=False)
        self._records[record.peer_id] = record
        return Accepted(record, is_new=True)

    def get(self, peer_id: str) -> CapabilityRecord | None:
        return self._records.get(peer_id)

    def records(self) -> list[CapabilityRecord]:
        return list(self._records.values())

    def expire(self, now: float) -> list[str]:
        """Drop records past their TTL; return the peer ids that went away."""
        gone = [pid for pid, rec in self._records.items() if self.expires_at(rec) < now]
        for pid in gone:
            del self._records[pid]
        return gone

    def forget(self, peer_id: str) -> None:
        self._records.pop(peer_id, None)

    def __len__(self) -> int:
        return len(self._records)
