"""Networking: libp2p host with safe defaults, DHT records, gossip, framed streams."""

from .dht import CapabilityRecordValidator, fetch_record, put_record, record_key
from .discovery import DialError, dial, peer_info_from_multiaddr
from .exchange import ExchangeRefused, fetch_table
from .gossip import Announcer, verify_batch
from .host import build_host
from .keys import libp2p_key_pair, load_or_create_identity, write_identity
from .streams import FramedStream, StreamClosed, open_stream, serve

__all__ = [
    "Announcer",
    "CapabilityRecordValidator",
    "DialError",
    "ExchangeRefused",
    "FramedStream",
    "StreamClosed",
    "build_host",
    "dial",
    "fetch_record",
    "fetch_table",
    "libp2p_key_pair",
    "load_or_create_identity",
    "open_stream",
    "peer_info_from_multiaddr",
    "put_record",
    "record_key",
    "serve",
    "verify_batch",
    "write_identity",
]
