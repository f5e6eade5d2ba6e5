"""``/mosaic/record/1``: fetch a peer's capability table over one direct stream.

The requester sends one :class:`protocol.RecordBatch` holding its own signed
record (or nothing, e.g. the ``peers`` CLI's throw-away client); the server
stores that record (it must be signed by the stream's remote peer: a direct
stream cannot relay someone else's record) and answers with its whole table as
``RecordBatch`` frames of at most 64 records, its own record first, then closes.
The table sent is only the peers the server verified (issue 12: relaying every
record it ever heard made one node's Sybil flood everyone's).

The dialling side of every new connection runs this, so a joiner learns the
table in one round trip instead of waiting for the gossip mesh to form
(heartbeat 1 s), and the listener learns the joiner.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from libp2p.abc import IHost

from protocol import RECORD_PROTOCOL, ErrorMessage, RecordBatch, SignedRecord, decode

from ..logs import event, get_logger
from .streams import Allowlist, FramedStream, StreamClosed, StreamPaths, open_stream, serve

log = get_logger("net.exchange")

MAX_BATCH = 64
EXCHANGE_TIMEOUT = 10.0


def serve_records(
    host: IHost,
    own_record: Callable[[], SignedRecord | None],
    table: Callable[[], list[SignedRecord]],
    on_record: Callable[[SignedRecord, str], object],
    *,
    allowlist: Allowlist,
) -> None:
    """Answer ``/mosaic/record/1``: ``on_record(signed, sender)`` gets the requester's own
    record (the registry checks it is signed by ``sender``); ``table()`` is what we reply."""

    async def handle(stream: FramedStream) -> None:
        request = await stream.receive(RecordBatch)
        if len(request.records) > 1:
            event(log, "exchange_oversized", peer=stream.remote_peer, records=len(request.records))
        for signed in request.records[:1]:
            on_record(signed, stream.remote_peer)
        mine = own_record()
        reply = [mine] if mine is not None else []
        own_id = _issuer(mine)
        reply += [s for s in table() if _issuer(s) != own_id]
        for start in range(0, len(reply), MAX_BATCH):
            await stream.send(RecordBatch(records=tuple(reply[start : start + MAX_BATCH])))
        if not reply:
            await stream.send(RecordBatch(records=()))

    serve(host, RECORD_PROTOCOL, handle, allowlist=allowlist, first_message_timeout=5.0, deadline=15.0, max_per_peer=2,
          max_total=64)


def _issuer(signed: SignedRecord | None) -> str | None:
    return None if signed is None else decode(signed.payload).peer_id  # type: ignore[attr-defined]


class ExchangeRefused(Exception):
    """The peer answered with an ``ErrorMessage`` (e.g. ``busy``) instead of its table."""


async def fetch_table(
    host: IHost, peer_id: str, own: SignedRecord | None, *, timeout: float = EXCHANGE_TIMEOUT,
    paths: StreamPaths | None = None,
) -> list[SignedRecord]:
    """Send ``own`` (if any) to ``peer_id`` and return every signed record it holds (unverified)."""
    records: list[SignedRecord] = []
    with trio.fail_after(timeout):
        stream = await open_stream(host, peer_id, RECORD_PROTOCOL, paths=paths)
        try:
            await stream.send(RecordBatch(records=(own,) if own is not None else ()))
            while True:
                try:
                    reply = await stream.receive((RecordBatch, ErrorMessage))
                except StreamClosed:
                    break
                if isinstance(reply, ErrorMessage):
                    raise ExchangeRefused(f"{peer_id[-8:]} answered {reply.code}: {reply.message}")
                records.extend(reply.records)
        finally:
            await stream.aclose()
    return records
