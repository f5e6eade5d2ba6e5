"""Where a peer connects from, as the per-address caps see it (streams.py's per-protocol limits
and conncap.py's inbound connection cap both count by these).

One IP address may hold only a share of a protocol's slots, one subnet (/24 for IPv4, /48 for
IPv6) a larger one: identities are free, addresses are not (issue 12).  Loopback is exempt: it is
this machine (and every peer of a test cluster).
"""

from __future__ import annotations

import ipaddress


def subnet_of(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) network of ``ip``; ``ip`` itself when it is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def exempt_from_caps(ip: str | None) -> bool:
    """Loopback (this machine) or unknown: counted by peer id only, never by address."""
    if ip is None:
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def connection_ip(raw: object) -> str | None:
    """The remote IP of a libp2p stream or muxed connection, or ``None`` when it has none."""
    try:
        address = raw.get_remote_address()  # type: ignore[attr-defined]
    except Exception:  # a muxer without addresses: account by peer id only
        return None
    return address[0] if address else None
