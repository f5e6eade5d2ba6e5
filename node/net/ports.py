"""Is a TCP port free?  Checked before a node listens, so a clash is one clear line.

py-libp2p 0.8.1's TCP listener sets SO_REUSEPORT (for hole punching), so a second
node *binds a port another node already listens on* and the kernel then splits
incoming connections between the two (measured: 3 dials in 8 reached the wrong
node).  A probe socket bound without SO_REUSEPORT fails with EADDRINUSE on any
port with a live listener, whatever options that listener set.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from multiaddr import Multiaddr


class PortInUse(Exception):
    """A port a node must listen on is taken; the message says which and what to do."""


def tcp_port_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound now (port 0 is always free)."""
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR only skips TIME_WAIT leftovers of a node that just stopped; on
        # Linux it never allows binding over a listener (SO_REUSEPORT would).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def next_free_port(host: str, port: int, *, tries: int = 100) -> int:
    """The first free port in ``port, port + 1, ...`` (raises :class:`PortInUse` after ``tries``)."""
    for candidate in range(port, min(port + tries, 65536)):
        if tcp_port_free(host, candidate):
            return candidate
    raise PortInUse(f"no free port in {host}:{port}-{port + tries - 1}")


def tcp_endpoint(multiaddr: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``/ip4|ip6/<host>/tcp/<port>`` listen multiaddr, else None."""
    addr = Multiaddr(multiaddr)
    protocols = [p.name for p in addr.protocols()]
    if "tcp" not in protocols:
        return None
    host = addr.value_for_protocol("ip4") if "ip4" in protocols else None
    if host is None and "ip6" in protocols:
        host = addr.value_for_protocol("ip6")
    if host is None:
        return None
    return str(host), int(addr.value_for_protocol("tcp"))


def check_listen_addrs(listen: Sequence[str]) -> None:
    """Raise :class:`PortInUse` naming the first listen multiaddr whose TCP port is taken."""
    for text in listen:
        endpoint = tcp_endpoint(text)
        if endpoint is not None and not tcp_port_free(*endpoint):
            raise PortInUse(
                f"port {endpoint[1]} ({text}) is already in use, probably by another node; "
                f"pass --listen with another port (tcp/0 picks a free one)"
            )


def with_port(multiaddr: str, port: int) -> str:
    """``multiaddr`` with its TCP port replaced."""
    host, old = tcp_endpoint(multiaddr) or ("", 0)
    return multiaddr.replace(f"/tcp/{old}", f"/tcp/{port}", 1)
