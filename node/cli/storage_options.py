"""Options and config set-up shared by the one-shot storage commands (publish, fetch, pin).

These commands run a short-lived node with no expert and no HTTP API, so
:func:`build_config` switches both off.  Not a command itself: not in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.config import NodeConfig


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    p.add_argument("--data-dir", help="node data dir holding the block store (default ~/.mosaic or $MOSAIC_DATA_DIR)")


def local_node_addr(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(multiaddr, http url)`` of the node running on the data dir of ``args``.

    Prints the error and returns ``(None, None)`` when no node runs there (the caller
    exits 3); a bad config exits 2 here.  A loopback multiaddr is preferred (the node may
    also list LAN ones).
    """
    from node.config import ConfigError
    from node.local_node import running_node

    from . import EXIT_USAGE

    try:
        data_dir = build_config(args).data_path
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    node = running_node(data_dir)
    if node is None or not node.multiaddrs:
        print(f"error: no node is running on data dir {data_dir}; start one with `python -m node start` "
              f"(or pass --data-dir DIR, or the address of a node)", file=sys.stderr)
        return None, None
    loopback = [a for a in node.multiaddrs if a.startswith("/ip4/127.")]
    return (loopback or node.multiaddrs)[0], node.http_url


def add_network(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap", action="append", metavar="MULTIADDR", help="peer to join through, with /p2p/<id> (repeatable)"
    )
    p.add_argument("--listen", action="append", metavar="MULTIADDR", help="listen address (default from config)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)


def build_config(args: argparse.Namespace) -> NodeConfig:
    """Defaults < TOML < ``MOSAIC_*`` env < flags; raises ``ConfigError`` naming the bad key."""
    from node.config import load_config

    config = load_config(args.config)
    if args.data_dir:
        config.data_dir = args.data_dir
    if getattr(args, "bootstrap", None):
        config.net.bootstrap = list(args.bootstrap)
    if getattr(args, "listen", None):
        config.net.listen = list(args.listen)
    if getattr(args, "log_level", None):
        config.log_level = args.log_level
    config.expert.enabled = False
    config.http.enabled = False
    return config.validate()


def setup(args: argparse.Namespace) -> NodeConfig | None:
    """:func:`build_config` with logging set up for a one-shot command; ``None`` after
    printing the bad key to stderr (the caller exits 2)."""
    from node import logs
    from node.config import ConfigError

    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return None
    # A one-shot command prints its result; node events are noise unless asked for.
    logs.setup(getattr(args, "log_level", None) or "warning", libp2p_level="critical")
    return config
