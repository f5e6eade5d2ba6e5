"""The :class:`Node`: one libp2p host, its DHT, GossipSub, registry and services.

Task tree (one trio nursery owned by :meth:`Node.run`; cancelling it stops
everything, innermost first)::

    Node.run
    ├── host.run(listen)                 libp2p swarm, listeners
    ├── background_trio_service(dht)     KadDHT server (our validator registered)
    ├── background_trio_service(pubsub)  Pubsub peer queues, validators
    ├── background_trio_service(router)  GossipSub heartbeat (1 s, B4)
    └── nursery
        ├── registry.run_expiry          drops records when their TTL lapses
        ├── announcer.run                gossip receive loop + paced publish loop
        ├── _on_connections              record exchange + routing table per new peer
        ├── _gossip_loop                 re-announce every net.announce_interval
        ├── _dht_publish_loop            re-put our record every net.dht_republish_interval
        ├── _dht_sync_loop               fetch records of known peers we lack (DHT = truth)
        ├── _routing_refresh_loop        refresh_routing_table every net.routing_refresh_interval
        ├── _retry_bootstrap (per addr)  dial a bootstrap peer that failed, with backoff
        └── service.run(node) ...        expert, HTTP API, storage (node.services)

:meth:`Node.stop` is the clean way out: the node sends a signed goodbye (a
``withdrawn`` record) to its peers, so they drop it at once instead of after the
record TTL, then stops.  Cancelling ``run`` stops it abruptly (a crash, for peers).

A *client* node (``Node(..., client=True)``, what ``fetch`` runs) advertises
nothing: no capability record, no gossip, no record exchange, a client-mode DHT
and no provider records, so it never shows up in other nodes' tables.
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Sequence

import trio
from libp2p.tools.anyio_service import background_trio_service

from protocol import CapabilityRecord, ProtocolError, RecordBatch, SignedRecord, decode, encode, sign_record

from .activity import Activity
from .config import NodeConfig
from .logs import event, get_logger, limited_event
from .metrics import NodeMetrics
from .nat import NatTraversal
from .net.conncap import InboundCaps, forget_addresses, remote_ip
from .net.dht import build_dht, fetch_record, prune_expired, put_record
from .net.discovery import (
    ConnectionWatcher,
    DialError,
    add_to_routing_table,
    connected_peers,
    dial,
    forget_dial_failure,
    forget_peer,
    peer_info_from_multiaddr,
    refresh_routing_table,
    routing_table_peers,
)
from .net.exchange import EXCHANGE_TIMEOUT, fetch_table, serve_records
from .net.gossip import Announcer, build_pubsub
from .net.host import build_host, disconnect_all, disconnect_peer, expand_wildcard, listen_multiaddrs
from .net.keys import libp2p_key_pair, load_or_create_identity
from .net.ports import check_listen_addrs
from .net.streams import Allowlist, StreamClosed, StreamPaths
from .registry import Registry

log = get_logger("node")

S = typing.TypeVar("S")

# Record exchanges tried per new connection (a busy peer may time one out).
EXCHANGE_ATTEMPTS = 3
# Re-sign our record when it is older than this fraction of its TTL.
_RESIGN_FRACTION = 0.25
# A bootstrap peer that cannot be reached is tried again after 1, 2, 4 ... 60 s.
BOOTSTRAP_RETRY_FIRST = 1.0
BOOTSTRAP_RETRY_MAX = 60.0
# Seconds a clean stop spends telling peers goodbye before it closes connections.
GOODBYE_TIMEOUT = 2.0


class Service(typing.Protocol):
    """Something a node runs next to networking (expert, HTTP API, storage)."""

    def record_fields(self) -> dict[str, object]:
        """Extra ``CapabilityRecord`` fields (``base_model``, ``adapters``, ``tags`` to add, ...)."""
        ...

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register stream handlers on ``node.host``, call ``task_status.started()``, run until cancelled."""
        ...


class Node:
    """A Mosaic peer. ``async with trio.open_nursery() as n: node = await n.start(Node(cfg).run)``."""

    def __init__(self, config: NodeConfig, *, services: Sequence[Service] = (), client: bool = False) -> None:
        self.config = config.validate()
        self.services = list(services)
        self.advertises = not client
        self.identity = load_or_create_identity(config.data_path)
        self.peer_id = self.identity.peer_id
        self.host = build_host(libp2p_key_pair(self.identity), config.net.listen, mdns=config.net.mdns and not client)
        self.dht = build_dht(self.host, client=client)
        self.router, self.pubsub = build_pubsub(self.host)
        self.registry = Registry(connected=lambda: connected_peers(self.host), trusted=config.net.trusted_peers)
        # Who may open streams on the protocols this node serves (every service's serve() gets it).
        self.allowlist = Allowlist(self.peer_id, config.net.trusted_peers)
        # This node's Prometheus metrics and the queries it coordinated (the query protocol and
        # the HTTP API record into them, the API serves them).
        self.metrics = NodeMetrics()
        self.activity = Activity(self.metrics)
        self.announcer = Announcer(
            self.pubsub,
            on_record=lambda signed, via: self.registry.offer(signed, source="gossip", via=via),
            on_reject=lambda reason: self.registry.note_rejected(reason, "gossip"),
            known=self.registry.__contains__,
        )
        self._signed: SignedRecord | None = None
        self._seq = 0
        self._started = trio.Event()
        self._stop_requested = trio.Event()
        self.table_exchange = True  # tests of the DHT path switch the direct exchange off
        # Inbound connections per IP / subnet (issue 12: identities are free, addresses are not).
        self.inbound_caps = InboundCaps()
        # How this node's streams to peers went (direct / relayed), and the relay circuits' dialer
        # that runs before one is opened: handed to what opens streams (coordinator, exchange).
        self.stream_paths = StreamPaths()
        # Reachability, relays, hole punching (issue 20).
        self.nat = NatTraversal(self.host, self.peer_id, config.net, self.stream_paths, own_addrs=self._direct_addrs,
                                records=self.registry.all, record_of=self.registry.get, announce=self.announce_now,
                                advertise=self.advertises)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (clean: goodbye sent) or cancellation (abrupt).

        Raises :class:`node.net.ports.PortInUse` before listening if a listen port is taken.
        """
        net = self.config.net
        # py-libp2p's listener sets SO_REUSEPORT and would share the port with another node.
        check_listen_addrs(net.listen)
        send, receive = trio.open_memory_channel[tuple[str, bool | None]](256)
        self.host.get_network().register_notifee(ConnectionWatcher(send, on_disconnect=self._on_disconnected))
        async with (
            self.host.run(listen_addrs=listen_multiaddrs(net.listen)),
            background_trio_service(self.dht),
            background_trio_service(self.pubsub),
            background_trio_service(self.router),
            trio.open_nursery() as nursery,
        ):
            await self.pubsub.wait_until_ready()
            if self.advertises:
                serve_records(
                    self.host,
                    own_record=lambda: self._signed,
                    # Only peers we verified: relaying unverified records spread the Sybil flood.
                    table=self.registry.verified_records,
                    on_record=self._on_direct_record,
                    allowlist=self.allowlist,
                )
            await nursery.start(self.registry.run_expiry)
            await nursery.start(self.nat.run)
            if self.advertises:
                await nursery.start(self.announcer.run)
            for service in self.services:
                await nursery.start(service.run, self)
            if self.advertises:
                self.announcer.enqueue(self._sign())
                nursery.start_soon(self._on_connections, receive)
            joined = await self._dial_bootstrap(nursery)
            # Routing-table walk, first DHT put and first DHT sync take seconds on big
            # networks (B5: ~1.4 s per refresh at N=25): do them after we are up.
            nursery.start_soon(self._join_dht, joined)
            if self.advertises:
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self._dht_publish_loop)
                nursery.start_soon(self._dht_sync_loop)
            nursery.start_soon(self._routing_refresh_loop)
            event(log, "node_started", peer=self.peer_id, name=self.config.name, addrs=",".join(self.full_multiaddrs()))
            self._started.set()
            task_status.started(self)
            try:
                await self._stop_requested.wait()
                await self._say_goodbye()
                nursery.cancel_scope.cancel()
            finally:
                await disconnect_all(self.host)

    def stop(self) -> None:
        """Stop cleanly: peers get a signed goodbye, then :meth:`run` returns."""
        self._stop_requested.set()

    async def _say_goodbye(self) -> None:
        """Tell peers we are leaving (bounded by ``GOODBYE_TIMEOUT``), so they drop us now.

        The goodbye is our record with a higher ``seq`` and ``withdrawn=True``: sent
        directly to every connected Mosaic peer (reliable, one round trip), on gossip
        for the others, and put in the DHT in place of our record (a node joining
        later learns about us from the DHT).  Receivers hold it until its TTL lapses,
        so our older records, still valid, are replays and cannot bring us back.
        """
        if not self.advertises or self._signed is None:
            return
        goodbye = self._sign(withdrawn=True)
        peers = [p for p in connected_peers(self.host) if p in self.registry]
        with trio.move_on_after(GOODBYE_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish_goodbye, goodbye)
                nursery.start_soon(self._put_in_dht, goodbye)
                for peer_id in peers:
                    nursery.start_soon(self._send_goodbye, peer_id, goodbye)
        event(log, "goodbye_sent", peer=self.peer_id, peers=len(peers))

    async def _publish_goodbye(self, goodbye: SignedRecord) -> None:
        try:
            await self.pubsub.publish(self.announcer.topic, encode(RecordBatch(records=(goodbye,))))
        except Exception as exc:  # best effort: the direct sends already reached our peers
            event(log, "goodbye_gossip_failed", error=f"{type(exc).__name__}: {exc}"[:160])

    async def _send_goodbye(self, peer_id: str, goodbye: SignedRecord) -> None:
        try:
            await fetch_table(self.host, peer_id, goodbye, timeout=GOODBYE_TIMEOUT, paths=self.stream_paths)
        except Exception as exc:  # gone or busy: gossip (or the TTL) covers it
            event(log, "goodbye_failed", peer=peer_id, error=f"{type(exc).__name__}: {exc}"[:160])

    def service(self, kind: type[S]) -> S | None:
        """The service of type ``kind`` this node runs, if any (e.g. storage for CID fetches)."""
        return next((s for s in self.services if isinstance(s, kind)), None)

    def full_multiaddrs(self) -> list[str]:
        """Our listen addresses with ``/p2p/<peer id>`` (what other nodes pass to ``--bootstrap``)."""
        out: list[str] = []
        for addr in self.host.get_addrs():
            text = str(addr)
            if "/p2p/" not in text:
                text = f"{text}/p2p/{self.peer_id}"
            # A wildcard listen address is not dialable: advertise the concrete interfaces.
            for concrete in expand_wildcard(text):
                if concrete not in out:
                    out.append(concrete)
        return out

    def _direct_addrs(self) -> list[str]:
        return list(dict.fromkeys(self.config.net.announce_addrs + self.full_multiaddrs()))

    async def connect(self, multiaddr: str) -> str:
        """Dial ``multiaddr``, add the peer to the routing table; return its peer id."""
        peer_id = await dial(self.host, multiaddr)
        await add_to_routing_table(self.dht, peer_id)
        return peer_id

    # ------------------------------------------------------------------ our record

    def own_record(self) -> CapabilityRecord | None:
        return self.registry.get(self.peer_id)

    def signed_record(self) -> SignedRecord | None:
        return self._signed

    def _sign(self, *, withdrawn: bool = False) -> SignedRecord:
        """Build and sign a fresh record (seq strictly increasing, in ms so it grows across restarts)."""
        fields: dict[str, object] = {}
        tags = list(self.config.tags)
        for service in self.services:
            extra = dict(service.record_fields())
            extra_tags = extra.pop("tags", ()) or ()
            for tag in extra_tags if isinstance(extra_tags, (list, tuple)) else ():
                if tag not in tags:
                    tags.append(tag)
            fields.update(extra)
        fields.update(self.nat.record_fields())
        now = time.time()
        self._seq = max(self._seq + 1, int(now * 1000))
        # Behind NAT our circuit addresses are the ones that work: they go first.
        addrs = list(dict.fromkeys(self.nat.circuit_addrs() + self._direct_addrs()))
        record = CapabilityRecord(
            peer_id=self.peer_id,
            multiaddrs=tuple(addrs[:16]),
            name=self.config.name,
            description=self.config.description,
            tags=tuple(tags[:32]),
            seq=self._seq,
            issued_at=now,
            ttl=self.config.net.record_ttl,
            withdrawn=withdrawn,
            **fields,  # type: ignore[arg-type]
        )
        self._signed = sign_record(record, self.identity)
        self.registry.offer(self._signed, source="self")
        return self._signed

    def _fresh_signed(self) -> SignedRecord:
        record = self.own_record()
        if self._signed is None or record is None or time.time() - record.issued_at > _RESIGN_FRACTION * record.ttl:
            return self._sign()
        return self._signed

    async def announce_now(self) -> None:
        """Re-sign our record and publish it on gossip and in the DHT."""
        signed = self._sign()
        self.announcer.enqueue(signed)
        await self._put_in_dht(signed)

    async def _put_in_dht(self, signed: SignedRecord) -> None:
        try:
            with trio.move_on_after(10):
                await put_record(self.dht, signed)
        except Exception as exc:  # retried on the next republish
            event(log, "dht_put_failed", error=f"{type(exc).__name__}: {exc}"[:160])

    # ------------------------------------------------------------------ discovery

    async def _dial_bootstrap(self, nursery: trio.Nursery) -> list[str]:
        """Dial every bootstrap peer once; those that fail are retried in the background."""
        peers, failed = [], []
        for addr in self.config.net.bootstrap:
            try:
                peer_id = await self.connect(addr)
            except DialError as error:
                failed.append((addr, str(error)))
                continue
            peers.append(peer_id)
            event(log, "bootstrap_connected", peer=peer_id)
        for addr, reason in failed:
            # One warning per unreachable peer, with the whole error: a node that never joins
            # would run alone silently otherwise.  The retries are quiet (debug) until one works.
            status = "running alone" if not peers else f"joined through {len(peers)} other bootstrap peer(s)"
            event(log, "bootstrap_failed", level=logging.WARNING, addr=addr, error=reason,
                  retry_in=f"{BOOTSTRAP_RETRY_FIRST:.0f}s", status=f"{status}; retrying until it answers")
            nursery.start_soon(self._retry_bootstrap, addr)
        return peers

    async def _retry_bootstrap(self, addr: str) -> None:
        """Dial ``addr`` again after 1, 2, 4 ... 60 s until it answers, then join the DHT."""
        delay = BOOTSTRAP_RETRY_FIRST
        attempt = 1
        while True:
            await trio.sleep(delay)
            forget_dial_failure(self.host, addr)
            attempt += 1
            try:
                peer_id = await self.connect(addr)
            except DialError as exc:
                delay = min(delay * 2, BOOTSTRAP_RETRY_MAX)
                event(log, "bootstrap_failed", level=logging.DEBUG, addr=addr, error=str(exc),
                      attempt=attempt, retry_in=f"{delay:.0f}s")
                continue
            event(log, "bootstrap_connected", peer=peer_id, attempt=attempt)
            await self._join_dht([peer_id])
            return

    async def _join_dht(self, bootstrap_peers: list[str]) -> None:
        """Fill the routing table (connections do not, B5), put our record, fetch the others'."""
        if bootstrap_peers:
            await refresh_routing_table(self.dht)
            event(log, "routing_table_filled", size=self.dht.get_routing_table_size())
        if not self.advertises:  # a client only needs the routing table for its lookups
            return
        if self._signed is not None:
            await self._put_in_dht(self._signed)
        if bootstrap_peers:
            await self.sync_from_dht()

    async def _on_connections(self, receive: trio.MemoryReceiveChannel[tuple[str, bool | None]]) -> None:
        async with trio.open_nursery() as nursery:
            async for peer_id, dialled_by_us in receive:
                nursery.start_soon(self._greet, peer_id, dialled_by_us)

    async def _greet(self, peer_id: str, dialled_by_us: bool | None) -> None:
        """Exchange records with a newly connected peer and route to it if it is a Mosaic node.

        One exchange per connection is enough (the request carries the dialler's record,
        the reply the listener's table), so only the dialling side starts it; the listener
        waits for the dialler's record to arrive before adding it to the routing table.
        """
        event(log, "peer_connected", peer=peer_id, outbound=dialled_by_us)
        if not self.allowlist.allows(peer_id):
            # A private swarm: streams from it are refused anyway (net.streams); drop the connection.
            event(log, "peer_refused", peer=peer_id, reason="not a trusted peer")
            await disconnect_peer(self.host, peer_id)
            return
        if dialled_by_us is False:
            refused = self.inbound_caps.admit(peer_id, remote_ip(self.host, peer_id), connected_peers(self.host))
            if refused is not None:
                limited_event(log, "peer_refused", peer=peer_id, reason=f"inbound connections per {refused} at cap")
                await disconnect_peer(self.host, peer_id)
                forget_addresses(self.host, peer_id)
                return
        if not self.table_exchange:
            await add_to_routing_table(self.dht, peer_id)
            return
        if dialled_by_us is False:
            with trio.move_on_after(2 * EXCHANGE_TIMEOUT):
                await self.registry.wait_for(lambda r: peer_id in r)
                await add_to_routing_table(self.dht, peer_id)
            return
        for attempt in range(EXCHANGE_ATTEMPTS):
            try:
                records = await fetch_table(self.host, peer_id, self._signed, paths=self.stream_paths)
                break
            except Exception as exc:  # not a Mosaic node (e.g. the peers CLI), busy, slow, or gone
                event(
                    log,
                    "exchange_failed",
                    peer=peer_id,
                    attempt=attempt + 1,
                    error=f"{type(exc).__name__}: {exc}"[:160],
                )
                if isinstance(exc, StreamClosed) and "protocols not supported" in str(exc):
                    return
                await trio.sleep(0.5 * (attempt + 1))
        else:
            return
        for signed in records:
            # The partner's own record is its own (from_peer); the rest count against its source cap.
            if _issuer_of(signed) == peer_id:
                self.registry.offer(signed, source="stream", from_peer=peer_id)
            else:
                self.registry.offer(signed, source="stream", via=peer_id)
        if dialled_by_us:
            # We dialled its address and it answered the exchange: reachable, unlike a peer that
            # pushed its record to us and hung up (issue 22, attack 2).
            self.registry.mark_reachable(peer_id)
        if peer_id in self.registry:
            await add_to_routing_table(self.dht, peer_id)

    def _on_disconnected(self, peer_id: str) -> None:
        """A peer's last connection closed: forget it unless it may still serve us.

        A peer with a record stays dialable (it crashed or the link broke: it may come
        back).  One without (a CLI client that exited, a peer that said goodbye) is
        forgotten, or it would be redialled every 30 s forever, an error line each time.
        Bootstrap peers are kept: we joined through them.
        """
        if peer_id in self.registry or peer_id in self._bootstrap_ids():
            return
        forget_peer(self.host, self.dht, peer_id)
        event(log, "peer_forgotten", level=logging.DEBUG, peer=peer_id)

    def _bootstrap_ids(self) -> set[str]:
        ids = set()
        for addr in self.config.net.bootstrap:
            try:
                ids.add(peer_info_from_multiaddr(addr).peer_id.to_base58())
            except DialError:
                continue
        return ids

    def _on_direct_record(self, signed: SignedRecord, sender: str) -> None:
        """A peer sent us its own record directly (it just connected): relay it on gossip.

        Its own first gossip announcement is often lost (it publishes before it has a
        mesh), while ours has one; relaying makes a joiner visible network-wide in ~1 RTT.
        """
        if self.registry.offer(signed, source="stream", from_peer=sender) is not None:
            self.announcer.enqueue(signed)

    async def sync_from_dht(self) -> int:
        """Fetch from the DHT the record of every known peer we lack or hold a stale copy of.

        Kademlia cannot list keys, so the peer ids come from the routing table and
        the live connections; returns how many records were new.
        """
        now = time.time()
        wanted = []
        for peer_id in (routing_table_peers(self.dht) | connected_peers(self.host)) - {self.peer_id}:
            record = self.registry.get(peer_id)
            if record is None or record.expires_at() - now < record.ttl / 2:
                wanted.append(peer_id)
        fresh = 0

        async def one(peer_id: str) -> None:
            nonlocal fresh
            signed = await fetch_record(self.dht, peer_id)
            if signed is not None and self.registry.offer(signed, source="dht", via=peer_id) is not None:
                fresh += 1

        async with trio.open_nursery() as nursery:
            for peer_id in wanted:
                nursery.start_soon(one, peer_id)
        if wanted:
            event(log, "dht_sync", asked=len(wanted), new=fresh)
        return fresh

    # ------------------------------------------------------------------ periodic upkeep

    def _interval(self, seconds: float) -> float:
        """Upkeep intervals never exceed half a TTL, or live peers would flap out of tables."""
        return min(seconds, self.config.net.record_ttl / 2)

    async def _gossip_loop(self) -> None:
        if self.config.net.announce_interval <= 0:
            return
        while True:
            await trio.sleep(self._interval(self.config.net.announce_interval))
            self.announcer.enqueue(self._fresh_signed())

    async def _dht_publish_loop(self) -> None:
        while True:
            interval = self.config.net.dht_republish_interval or self.config.net.record_ttl
            await trio.sleep(self._interval(interval))
            prune_expired(self.dht)
            await self._put_in_dht(self._fresh_signed())

    async def _dht_sync_loop(self) -> None:
        if self.config.net.dht_sync_interval <= 0:
            return
        while True:
            await trio.sleep(self._interval(self.config.net.dht_sync_interval))
            await self.sync_from_dht()

    async def _routing_refresh_loop(self) -> None:
        if self.config.net.routing_refresh_interval <= 0:
            return
        while True:
            await trio.sleep(self.config.net.routing_refresh_interval)
            await refresh_routing_table(self.dht)


def _issuer_of(signed: SignedRecord) -> str | None:
    try:
        return decode(signed.payload, CapabilityRecord).peer_id
    except ProtocolError:
        return None
