"""KadDHT storage of capability records: ``/mosaic-cap/<peer id>`` -> encoded ``SignedRecord``.

The DHT is the source of truth for discovery (gossip is lossy, B3).  Each node
re-puts its own record periodically; a reader asks the network, not its local
copy:

* py-libp2p's ``get_value`` returns the local copy whenever one exists and never
  asks the network (B5, read in the code), so a node that stored a record once
  keeps serving that stale version.  :func:`fetch_record` queries the closest
  peers itself and keeps the highest ``seq``.
* A namespaced key with no validator is accepted with only a warning (B5):
  :class:`CapabilityRecordValidator` is registered for ``protocol.DHT_NAMESPACE``
  and rejects bad signatures, expired records and records stored under another
  peer's key; ``select`` prefers the highest ``seq`` so a replayed old record
  never replaces a newer one on a DHT server.

The DHT is also an open store anyone can write to.  py-libp2p accepts any key
namespace without a validator (200 puts of 1000 KiB under a made-up namespace
added 200 MiB, issue 12), so :func:`build_dht` turns strict validation on: only
``/mosaic-cap/`` (ours) and libp2p's own ``/pk/`` and ``/ipns/`` (size-checked by
their validators) are stored.  Every namespace is wrapped in :class:`Capped`:
values over :data:`MAX_DHT_VALUE` bytes and new keys beyond :data:`MAX_DHT_VALUES`
stored entries are refused, and :func:`prune_expired` drops our records once
their (capped) lifetime is over instead of libp2p's 24 h.  New keys are also
charged to the peer that PUT them, at most ``MAX_DHT_VALUES_PER_PEER`` each
(:mod:`node.net.dht_quota`, issue 22): one identity cannot fill the store.

Which keys exist?  Kademlia cannot enumerate keys, so a node learns *peer ids*
from its routing table and peerstore (bootstrap + ``refresh_routing_table``
fill them) and fetches ``/mosaic-cap/<peer id>`` for each one it has no fresh
record for (see :mod:`node.net.discovery`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.records.ipns import IPNSValidator
from libp2p.records.pubkey import PublicKeyValidator
from libp2p.records.validator import NamespacedValidator, Validator

from protocol import DHT_NAMESPACE, ProtocolError, SignedRecord, decode, encode, verify_record
from protocol.records import MAX_RECORD_TTL

from ..logs import event, get_logger, limited_event
from .dht_quota import PeerQuota, charge_puts_to_sender

log = get_logger("net.dht")

KEY_PREFIX = f"/{DHT_NAMESPACE}/"
# Per-peer GET budget: one slow or dead DHT server must not stall a sweep.
_GET_TIMEOUT = 3.0
# Largest DHT value stored: a SignedRecord (16 KiB payload + signature) with framing to spare.
MAX_DHT_VALUE = 17 * 1024
# Entries the local value store holds, all namespaces together (libp2p's own cap is 50,000
# entries of up to 1 MiB each, for 24 h).  New keys past it are refused until entries expire.
MAX_DHT_VALUES = 4096
# Closest peers asked per fetch (Kademlia's k).  Values are stored at the k peers closest
# to the key *when they are put*; peers that joined later hold nothing until the next
# republish, so we ask k of them, plus the record's owner (below).
_FETCH_FANOUT = 20


def record_key(peer_id: str) -> str:
    """The DHT key of ``peer_id``'s capability record: ``/mosaic-cap/<peer id>``."""
    return f"{KEY_PREFIX}{peer_id}"


def check_value(key: str, value: bytes, now: float | None = None) -> SignedRecord:
    """Decode and verify a DHT value; raise ``ProtocolError`` unless it is ``key``'s valid record."""
    when = time.time() if now is None else now
    signed = decode(value, SignedRecord)
    record = verify_record(signed, when)
    if key != record_key(record.peer_id):
        raise ProtocolError(f"record of {record.peer_id[-8:]} stored under another key")
    if record.issued_at + MAX_RECORD_TTL < when:
        raise ProtocolError(f"record of {record.peer_id[-8:]} is older than {MAX_RECORD_TTL:g} s")
    return signed


def _seq(key: str, value: bytes) -> int:
    try:
        signed = check_value(key, value)
    except ProtocolError:
        return -1
    return decode(signed.payload).seq  # type: ignore[attr-defined]


class CapabilityRecordValidator(Validator):
    """libp2p record validator for ``/mosaic-cap/``: signature, expiry, key match, newest wins."""

    def validate(self, key: str, value: bytes) -> None:
        # Raising anything rejects the PUT / GET answer (the DHT catches Exception).
        check_value(key, value)

    def select(self, key: str, values: list[bytes]) -> int:
        if not values:
            raise ValueError("no values to select from")
        seqs = [_seq(key, v) for v in values]
        return max(range(len(values)), key=lambda i: seqs[i])


class DHTValueRefused(ValueError):
    """A PUT the local store refuses (unknown namespace, too big, store full)."""


class Capped(Validator):
    """Wraps a namespace's validator with a value-size cap and a cap on stored entries."""

    def __init__(self, inner: Validator, store: Mapping[bytes, object], *, own_key: str = "",
                 max_value: int = MAX_DHT_VALUE, max_values: int = MAX_DHT_VALUES,
                 quota: PeerQuota | None = None) -> None:
        self.inner = inner
        self.store = store
        self.own_key = own_key  # our own record always has room
        self.max_value = max_value
        self.max_values = max_values
        self.quota = quota  # new keys per sending peer (shared by every namespace of a node)

    def validate(self, key: str, value: bytes) -> None:
        try:
            if len(value) > self.max_value:
                raise DHTValueRefused(f"value of {len(value)} bytes > {self.max_value}")
            if key != self.own_key and key.encode() not in self.store and len(self.store) >= self.max_values:
                raise DHTValueRefused(f"value store holds {len(self.store)} entries")
            self.inner.validate(key, value)
            if self.quota is not None and key != self.own_key:
                self.quota.charge(key.encode())
        except Exception as exc:
            # libp2p logs the whole value in hex at warning level: say it briefly here instead.
            limited_event(
                log, "dht_value_refused", key=key[:80], size=len(value), reason=f"{type(exc).__name__}: {exc}"[:160]
            )
            raise

    def select(self, key: str, values: list[bytes]) -> int:
        return self.inner.select(key, values)


def build_dht(host: IHost, *, client: bool = False) -> KadDHT:
    """A server-mode KadDHT (every Mosaic node stores records) that stores only namespaces it
    validates (strict validation), each behind :class:`Capped`.

    ``client``: a client-mode DHT (a fetch-only client) offers no KAD protocol, so
    it stores nothing for others and answers no queries.
    """
    dht = KadDHT(host, DHTMode.CLIENT if client else DHTMode.SERVER, strict_validation=True)
    store = dht.value_store.store
    own = record_key(str(host.get_id()))
    quota = PeerQuota(store)
    dht.set_validator(NamespacedValidator({
        DHT_NAMESPACE: Capped(CapabilityRecordValidator(), store, own_key=own, quota=quota),
        "pk": Capped(PublicKeyValidator(), store, quota=quota),
        "ipns": Capped(IPNSValidator(), store, quota=quota),
    }, strict_validation=True))
    if not client:
        charge_puts_to_sender(host, dht)
    return dht


def prune_expired(dht: KadDHT, now: float | None = None) -> int:
    """Drop stored ``/mosaic-cap/`` values that no longer validate (expired); return how many.
    libp2p would keep them 24 h, and an attacker's share of the store with them."""
    when = time.time() if now is None else now
    prefix = KEY_PREFIX.encode()
    gone = []
    for key, (record, _validity) in list(dht.value_store.store.items()):
        if key.startswith(prefix):
            try:
                check_value(key.decode(), record.value, when)
            except (ProtocolError, UnicodeDecodeError):
                gone.append(key)
    for key in gone:
        dht.value_store.store.pop(key, None)
    return len(gone)


async def put_record(dht: KadDHT, signed: SignedRecord) -> None:
    """Store our own record locally and at the closest peers."""
    record = decode(signed.payload)
    await dht.put_value(record_key(record.peer_id), encode(signed))  # type: ignore[attr-defined]


async def fetch_record(dht: KadDHT, peer_id: str) -> SignedRecord | None:
    """Ask the network (not just the local store) for ``peer_id``'s newest valid record."""
    key = record_key(peer_id)
    key_bytes = key.encode()
    candidates: list[bytes] = []
    local = dht.value_store.get(key_bytes)
    if local is not None:
        candidates.append(local.value)
    if dht.routing_table.size() < _FETCH_FANOUT:
        # Fewer than k peers known: the routing table already is the neighbourhood an
        # iterative lookup would converge to, and skipping the walk makes a sync of many
        # keys ~10x cheaper (one walk per key dominated it in benchmarks/discovery.py).
        peers = dht.routing_table.find_local_closest_peers(key_bytes, _FETCH_FANOUT)
    else:
        try:
            peers = await dht.peer_routing.find_closest_peers_network(key_bytes)
        except Exception as exc:  # a lookup failure is a miss, not a crash
            event(log, "dht_lookup_failed", peer=peer_id, error=type(exc).__name__)
            peers = []
    me = dht.local_peer_id
    # The owner always holds its own record (it put it first, locally): ask it too when it
    # is reachable, so a record is found even before its first republish reached the k closest.
    owner = ID.from_base58(peer_id)
    reachable = set(dht.routing_table.get_peer_ids()) | set(dht.host.get_connected_peers())
    if owner not in peers and owner in reachable:
        peers = [*peers, owner]

    async def ask(peer: ID) -> None:
        with trio.move_on_after(_GET_TIMEOUT):
            try:
                result = await dht.value_store._get_from_peer(peer, key_bytes, return_record=True)
            except Exception:
                return
            value = getattr(result, "value", None)
            if value:
                candidates.append(value)

    async with trio.open_nursery() as nursery:
        asked = [p for p in peers if p != me and p != owner][:_FETCH_FANOUT]
        if owner in peers and owner != me:
            asked.append(owner)
        for peer in asked:
            nursery.start_soon(ask, peer)

    best: SignedRecord | None = None
    best_seq = -1
    for value in candidates:
        try:
            signed = check_value(key, value)
        except ProtocolError as exc:
            event(log, "dht_value_rejected", peer=peer_id, reason=type(exc).__name__)
            continue
        seq = decode(signed.payload).seq  # type: ignore[attr-defined]
        if seq > best_seq:
            best, best_seq = signed, seq
    return best
