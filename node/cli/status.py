"""`python -m node status`: a readable table of the network as one peer sees it.

By default it asks the node running on the data dir (``--data-dir``, default
``~/.mosaic``): through its HTTP API when it serves one, else over libp2p.
``--peer MULTIADDR`` asks any peer over libp2p (``/mosaic/record/1``: its signed
capability table, verified here); ``--http URL`` reads a node's ``GET /status``
(which adds the coordinator's observed latency and failures).  ``--json`` prints
the raw status for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import EXIT_OK, EXIT_UNREACHABLE
from .storage_options import add_common, local_node_addr


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show the peers, capabilities and load of the network",
                       description="Print a table of the network as seen by one peer.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--peer", metavar="MULTIADDR", help="ask this peer over libp2p (default: the local node)")
    src.add_argument("--http", metavar="URL", help="read GET /status from a node's HTTP API, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", default=None, help="bearer token for --http")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument("--timeout", type=float, default=10.0)
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.peer is None and args.http is None:
        args.peer, args.http = local_node_addr(args)
        if args.peer is None:
            return EXIT_UNREACHABLE
        if args.http and args.token is None:
            from .storage_options import build_config

            args.token = build_config(args).http.token
    try:
        status = _from_http(args) if args.http else _from_peer(args)
    except StatusUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status))
    return EXIT_OK


class StatusUnavailable(Exception):
    """The peer or HTTP endpoint could not be asked."""


def _from_http(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        reply = httpx.get(args.http.rstrip("/") + "/status", headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise StatusUnavailable(f"GET {args.http}/status failed: {exc}") from None
    if reply.status_code != 200:
        raise StatusUnavailable(f"GET {args.http}/status answered {reply.status_code}: {reply.text[:300]}")
    return reply.json()


def _from_peer(args: argparse.Namespace) -> dict[str, Any]:
    import trio

    return trio.run(_ask_peer, args)


async def _ask_peer(args: argparse.Namespace) -> dict[str, Any]:
    import trio

    from node.net.discovery import DialError, dial
    from node.net.exchange import ExchangeRefused, fetch_table
    from node.net.host import build_host, listen_multiaddrs
    from node.net.keys import libp2p_key_pair
    from protocol import Identity, ProtocolError, verify_record

    listen = ["/ip4/127.0.0.1/tcp/0"]
    host = build_host(libp2p_key_pair(Identity.generate()), listen)
    failure: str | None = None  # raised outside host.run(): its nursery would wrap it in an ExceptionGroup
    async with host.run(listen_addrs=listen_multiaddrs(listen)):
        try:
            peer_id = await dial(host, args.peer, timeout=args.timeout)
            signed = await fetch_table(host, peer_id, None, timeout=args.timeout)
        except (DialError, ExchangeRefused, trio.TooSlowError) as exc:
            failure = str(exc) or "timed out"
    if failure is not None:
        raise StatusUnavailable(failure)
    now = time.time()
    peers = []
    for item in signed:
        try:
            record = verify_record(item, now)
        except ProtocolError:
            continue  # forged or expired: not part of the network we show
        peers.append({
            "peer_id": record.peer_id, "name": record.name, "tags": list(record.tags),
            "base_model": record.base_model, "adapters": [a.name for a in record.adapters],
            "device": record.device, "load": record.load, "queue_depth": record.queue_depth,
            "expires_in_s": round(record.expires_at() - now, 1), "self": record.peer_id == peer_id,
            "reachability": record.reachability, "relay_service": record.relay_service,
        })
    own = next((p for p in peers if p["self"]), None)
    return {"peer_id": peer_id, "peers": peers, "reachability": own["reachability"] if own else "unknown"}


def render(status: dict[str, Any]) -> str:
    """A fixed-width table: one row per peer, the answering peer marked with '*'.

    LATENCY and FAILS are the coordinator's observations (``--http`` / a local node
    with HTTP; failures decay, "(banned)" marks a peer routing avoids for now); SCORE
    appears when the status carries one.
    """
    peers = status.get("peers", [])
    scored = any(p.get("score") is not None for p in peers)
    columns = ("", "PEER", "NAME", "MODEL", "ADAPTERS", "TAGS", "LOAD", "QUEUE", "LATENCY", "FAILS",
               *(("SCORE",) if scored else ()), "REACH", "TTL")
    rows = []
    for peer in sorted(status.get("peers", []), key=lambda p: (not p.get("self"), p.get("name", ""))):
        latency = peer.get("latency_s")
        rows.append((
            "*" if peer.get("self") else "",
            "…" + peer["peer_id"][-10:],
            peer.get("name", ""),
            peer.get("base_model") or "(no expert)",
            ",".join(peer.get("adapters", [])) or "-",
            ",".join(peer.get("tags", [])) or "-",
            f"{peer.get('load', 0.0):.2f}",
            str(peer.get("queue_depth", 0)),
            "-" if latency is None else f"{latency * 1000:.0f}ms",
            _failures(peer),
            *((_score(peer.get("score")),) if scored else ()),
            _reach(peer),
            f"{peer.get('expires_in_s', 0):.0f}s",
        ))
    widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]
    experts = sum(1 for p in peers if p.get("base_model"))
    load = sum(float(p.get("load", 0.0)) for p in peers if p.get("base_model"))
    summary = f"{len(rows)} peer(s), {experts} expert(s)"
    if experts:
        summary += f", mean load {load / experts:.2f}"
    lines = [f"network as seen by {status.get('peer_id', '?')}: {summary}"]
    if status.get("reachability"):
        lines.append(_reachability_line(status))
    if status.get("strategies"):
        lines.append("strategies: " + ", ".join(f"mosaic/{s}" for s in status["strategies"]))
    for row in [columns, *rows]:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _failures(peer: dict[str, Any]) -> str:
    """Recent failures (decaying, so fractional) and whether routing currently avoids the peer."""
    value = peer.get("recent_failures")
    text = "-" if value is None else f"{float(value):.1f}" if isinstance(value, (int, float)) else str(value)
    return text + (" (banned)" if peer.get("banned") else "")


def _score(value: object) -> str:
    return "-" if value is None else f"{float(value):.2f}" if isinstance(value, (int, float)) else str(value)


def _reach(peer: dict[str, Any]) -> str:
    """public / private / unknown (AutoNAT), "+relay" when the peer offers the relay service."""
    return str(peer.get("reachability") or "unknown") + ("+relay" if peer.get("relay_service") else "")


def _reachability_line(status: dict[str, Any]) -> str:
    line = f"reachability: {status['reachability']}"
    nat = status.get("nat") or {}
    relays = (nat.get("reservations") or {}).get("relays") or []
    if relays:
        line += " via relay(s) " + ", ".join("…" + str(r.get("relay", ""))[-10:] for r in relays)
    if nat.get("relay_service"):
        service = nat["relay_service"]
        line += (f"; relay service: {service.get('reservations', 0)} reservation(s), "
                 f"{service.get('circuits_active', 0)} circuit(s) open, {service.get('bytes_relayed', 0)} B relayed")
    return line
