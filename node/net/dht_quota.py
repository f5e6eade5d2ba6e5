"""Per-peer quotas on the DHT value store (issue 22, attack 8).

One shared cap on stored entries (``MAX_DHT_VALUES``) let one identity fill it:
4,092 valid ``/pk/`` entries (each a fresh key's own public key, all valid) put
over one connection in 11 s, and from then on every newcomer's record was
refused.  Entries are therefore charged to the peer that PUT them: at most
:data:`MAX_DHT_VALUES_PER_PEER` new keys per peer, all namespaces together, so
filling the store takes ``MAX_DHT_VALUES / MAX_DHT_VALUES_PER_PEER`` connections
from distinct identities (and the inbound caps per IP and subnet bound those).

py-libp2p's validator API sees only ``(key, value)``, not who sent them; the KAD
stream handler (``KadDHT.handle_stream``, which validates a PUT in the same task)
is wrapped by :func:`charge_puts_to_sender` to note the sender in a context
variable that :class:`PeerQuota` reads.  Values this node stores itself (its own
record, a GET answer it caches) have no sender and are not charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

from libp2p.abc import IHost, INetStream
from libp2p.kad_dht.kad_dht import PROTOCOL_ID, KadDHT

# New keys one peer may have in our value store (its own record needs 1-2; 64 is slack for
# whatever else an honest peer puts, e.g. records it republishes).
MAX_DHT_VALUES_PER_PEER = 64

# The peer whose KAD stream is being handled in this task (None: this node itself).
_sender: ContextVar[str | None] = ContextVar("mosaic_dht_sender", default=None)


class DHTQuotaExceeded(ValueError):
    """The sending peer already holds its quota of entries in our value store."""


class PeerQuota:
    """Which peer put each stored key; refuses a peer's new key past its quota."""

    def __init__(self, store: Mapping[bytes, object], per_peer: int = MAX_DHT_VALUES_PER_PEER) -> None:
        self.store = store
        self.per_peer = per_peer
        self._putter: dict[bytes, str] = {}  # stored key -> the peer that first put it

    def charge(self, key: bytes) -> None:
        """Charge a PUT of ``key`` to the current sender; raise :class:`DHTQuotaExceeded` when over quota.

        Updates of a key already stored are free (the record validator decides about them).
        Called before libp2p stores the value; a PUT refused afterwards (a worse record)
        leaves a charge that is forgotten once the key is found absent from the store.
        """
        sender = _sender.get()
        if sender is None or key in self.store:
            return
        held = self.held(sender)
        if held >= self.per_peer:
            raise DHTQuotaExceeded(f"peer {sender[-8:]} already holds {held} entries")
        self._putter[key] = sender

    def held(self, peer_id: str) -> int:
        """Entries of ``peer_id`` still in the store (charges of departed keys are dropped)."""
        for gone in [k for k in self._putter if k not in self.store]:
            del self._putter[gone]
        return sum(1 for owner in self._putter.values() if owner == peer_id)


def charge_puts_to_sender(host: IHost, dht: KadDHT) -> None:
    """Re-register the DHT's KAD handler so that the validators know who sent each PUT."""
    handle = dht.handle_stream

    async def handle_noting_sender(stream: INetStream) -> None:
        _sender.set(stream.muxed_conn.peer_id.to_base58())
        await handle(stream)

    host.set_stream_handler(PROTOCOL_ID, handle_noting_sender)
