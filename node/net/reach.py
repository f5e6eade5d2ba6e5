"""Who can reach a listen address: this machine, the local network, or the internet.

``start`` prints it next to each address, so a newcomer knows which one to hand to a
node on another machine (and that a loopback-only node takes none).
"""

from __future__ import annotations

import ipaddress

THIS_MACHINE = "this machine only"
LOCAL_NETWORK = "your local network"
INTERNET = "the internet, unless a firewall or NAT blocks it"


def reach_of(multiaddr: str) -> str | None:
    """Where ``/ip4/<ip>/...`` (or ``/ip6/``) is reachable from; ``None`` for other addresses."""
    parts = multiaddr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return None
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return None
    if ip.is_loopback:
        return THIS_MACHINE
    if ip.is_private or ip.is_link_local or ip in ipaddress.ip_network("100.64.0.0/10"):
        return LOCAL_NETWORK
    return INTERNET


def for_others_first(addrs: list[str]) -> list[str]:
    """``addrs`` with the ones other machines can use first (stable otherwise)."""
    return sorted(addrs, key=lambda a: reach_of(a) == THIS_MACHINE)
