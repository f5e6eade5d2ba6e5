"""Linux network namespaces for NAT tests: a public network and home networks behind routers.

Layout (every name carries a per-run prefix so parallel runs never collide)::

    pub   10.99.0.1/24 on bridge br0 -- the "internet": relays and bootstrap nodes live here
     ├── veth -> rA  (WAN 10.99.0.21, LAN 10.1.0.1/24, MASQUERADE)  -> hA 10.1.0.2
     └── veth -> rB  (WAN 10.99.0.22, LAN 10.2.0.1/24, MASQUERADE)  -> hB 10.2.0.2

A router's NAT is one of
  * ``"cone"``: plain MASQUERADE; Linux keeps the source port when it is free, so the
    mapping is endpoint-independent and TCP hole punching from the listen port works;
  * ``"symmetric"``: MASQUERADE ``--random-fully``: every connection gets a random
    external port, so the address a relay observed is useless to anyone else.
Both routers drop unsolicited inbound connections (a home router's firewall): a packet
to the WAN address is answered only if it belongs to a connection started inside.

Only addresses inside 10.99.0.0/24, 10.1.0.0/24 and 10.2.0.0/24 are used, all on
veths created here; nothing is routed outside the namespaces.  ``teardown`` deletes
every namespace (the veths and the bridge go with them).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field

PUBLIC_IP = "10.99.0.1"
PUBLIC_EXTRA_IPS = ("10.99.0.2", "10.99.0.3")  # more public hosts (second relay, abuser)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def netns_available() -> str | None:
    """Why namespaces cannot be built here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if run("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            return f"{tool} is not installed (scripts/install.sh installs iproute2 and iptables as root)"
    return None


@dataclass
class Home:
    router: str
    ns: str
    ip: str
    wan_ip: str
    nat: str


@dataclass
class Topology:
    prefix: str
    pub: str
    homes: dict[str, Home] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def teardown(self) -> None:
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


def _ns(topo: Topology, name: str) -> str:
    full = f"{topo.prefix}{name}"
    run("ip", "netns", "add", full)
    topo.namespaces.append(full)
    run("ip", "-n", full, "link", "set", "lo", "up")
    return full


def _veth(a_ns: str, a_if: str, b_ns: str, b_if: str) -> None:
    # Create both ends inside a_ns first (interface names are per namespace), then move one.
    run("ip", "-n", a_ns, "link", "add", a_if, "type", "veth", "peer", "name", b_if)
    run("ip", "-n", a_ns, "link", "set", b_if, "netns", b_ns)
    run("ip", "-n", a_ns, "link", "set", a_if, "up")
    run("ip", "-n", b_ns, "link", "set", b_if, "up")


def build(nats: dict[str, str], *, prefix: str | None = None) -> Topology:
    """Build ``pub`` plus one home per entry of ``nats`` (``{"A": "cone", "B": "symmetric"}``)."""
    topo = Topology(prefix=prefix or f"mz{uuid.uuid4().hex[:6]}", pub="")
    try:
        pub = topo.pub = _ns(topo, "pub")
        run("ip", "-n", pub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", pub, "addr", "add", f"{PUBLIC_IP}/24", "dev", "br0")
        for extra in PUBLIC_EXTRA_IPS:
            run("ip", "-n", pub, "addr", "add", f"{extra}/24", "dev", "br0")
        run("ip", "-n", pub, "link", "set", "br0", "up")
        for index, (label, nat) in enumerate(sorted(nats.items()), start=1):
            if nat not in ("cone", "symmetric"):
                raise ValueError(f"unknown NAT kind {nat!r}")
            router, home = _ns(topo, f"r{label}"), _ns(topo, f"h{label}")
            wan_ip, lan_net = f"10.99.0.{20 + index}", f"10.{index}.0"
            _veth(pub, f"p{label}", router, "wan")
            run("ip", "-n", pub, "link", "set", f"p{label}", "master", "br0")
            run("ip", "-n", router, "addr", "add", f"{wan_ip}/24", "dev", "wan")
            _veth(router, "lan", home, "eth0")
            run("ip", "-n", router, "addr", "add", f"{lan_net}.1/24", "dev", "lan")
            run("ip", "-n", home, "addr", "add", f"{lan_net}.2/24", "dev", "eth0")
            run("ip", "-n", home, "route", "add", "default", "via", f"{lan_net}.1")
            run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            masquerade = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
            if nat == "symmetric":
                masquerade.append("--random-fully")
            run("ip", "netns", "exec", router, *masquerade)
            # The home router's firewall: nothing unsolicited comes in from the WAN.
            for chain in ("INPUT", "FORWARD"):
                run("ip", "netns", "exec", router, "iptables", "-A", chain, "-i", "wan",
                    "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
                run("ip", "netns", "exec", router, "iptables", "-A", chain, "-i", "wan", "-j", "DROP")
            topo.homes[label] = Home(router=router, ns=home, ip=f"{lan_net}.2", wan_ip=wan_ip, nat=nat)
    except BaseException:
        topo.teardown()
        raise
    return topo


def leftover_namespaces(prefix: str) -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
