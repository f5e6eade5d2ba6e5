"""`python -m node start`: run a Mosaic node until SIGINT/SIGTERM.

Settings come from defaults < ``--config FILE`` (TOML) < ``MOSAIC_*`` env < flags.
The first stdout line is ``mosaic node <peer id> listening on <multiaddr>``
(the multi-process test harness parses it); logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("start", help="run a node", description="Run a Mosaic node until SIGINT/SIGTERM.")
    p.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    p.add_argument("--data-dir", help="identity key and state (default ~/.mosaic or $MOSAIC_DATA_DIR)")
    p.add_argument("--name", help="human-readable node name in the capability record")
    p.add_argument("--description", help="what this node offers, in a sentence")
    p.add_argument("--tags", help="comma-separated capability tags, e.g. math,code")
    p.add_argument("--listen", action="append", metavar="MULTIADDR", help="listen address (repeatable), e.g. /ip4/0.0.0.0/tcp/4001")
    p.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="peer to join through, with /p2p/<id> (repeatable)")
    p.add_argument("--mdns", action="store_true", default=None, help="discover peers on the LAN with mDNS")
    p.add_argument("--record-ttl", type=float, help="seconds a capability record stays valid")
    p.add_argument("--announce-interval", type=float, help="seconds between gossip re-announcements (0: off)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    expert = p.add_argument_group("expert")
    expert.add_argument("--no-expert", action="store_true", help="do not serve a model (coordinate only)")
    expert.add_argument("--model", help="base model: HF dir, safetensors or GGUF path (default: embedded SmolLM2)")
    expert.add_argument("--adapter", action="append", metavar="NAME=PATH", help="LoRA adapter (repeatable; PATH or CID)")
    expert.add_argument("--device", help="auto, cpu, cuda, cuda:0, mps")
    http = p.add_argument_group("http")
    http.add_argument("--http", metavar="HOST:PORT", help="OpenAI-compatible HTTP API address")
    http.add_argument("--no-http", action="store_true", help="do not serve HTTP")
    p.add_argument("--ipfs-api", metavar="MULTIADDR", help="external IPFS daemon API, e.g. /ip4/127.0.0.1/tcp/5001")
    p.add_argument("--upload-limit", type=float, metavar="MIB_S", help="cap on serving weights to peers, MiB/s")
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace, env: dict[str, str] | None = None):
    """Defaults < TOML < env < flags, validated; raises ``ConfigError`` naming the bad key."""
    from node.config import ConfigError, load_config

    config = load_config(args.config, env=os.environ if env is None else env)
    if args.data_dir:
        config.data_dir = args.data_dir
    for attr in ("name", "description", "log_level"):
        if getattr(args, attr) is not None:
            setattr(config, attr, getattr(args, attr))
    if args.tags is not None:
        config.tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    if args.listen:
        config.net.listen = list(args.listen)
    if args.bootstrap:
        config.net.bootstrap = list(args.bootstrap)
    if args.mdns:
        config.net.mdns = True
    if args.record_ttl is not None:
        config.net.record_ttl = args.record_ttl
    if args.announce_interval is not None:
        config.net.announce_interval = args.announce_interval
    if args.no_expert:
        config.expert.enabled = False
    if args.model:
        config.expert.model = args.model
    for item in args.adapter or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"expert.adapters: --adapter {item!r} must be NAME=PATH")
        config.expert.adapters[name] = path
    if args.device:
        config.expert.device = args.device
    if args.http:
        config.http.listen = args.http
    if args.no_http:
        config.http.enabled = False
    if args.ipfs_api:
        config.storage.ipfs_api = args.ipfs_api
    if args.upload_limit is not None:
        config.storage.upload_limit_mib = args.upload_limit
    return config.validate()


def run(args: argparse.Namespace) -> int:
    from node.config import ConfigError

    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    from node import logs

    logs.setup(config.log_level)
    import trio

    return trio.run(_main, config)


async def _main(config) -> int:
    from node.app import Node
    from node.expert.loader import ModelLoadError
    from node.logs import event, get_logger
    from node.net.keys import IdentityFileError
    from node.services import default_services

    log = get_logger("cli.start")
    try:
        node = Node(config, services=default_services(config))
    except IdentityFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_failed = False
    try:
        await _serve(node, log)
    except* ModelLoadError as group:
        # A bad --model/--adapter is the operator's input: say which and why, no traceback.
        for exc in _leaves(group):
            print(f"error: {exc}", file=sys.stderr)
        load_failed = True
    if load_failed:
        return 2
    event(log, "stopped", peer=node.peer_id)
    return 0


def _leaves(group: BaseExceptionGroup):
    """The exceptions inside ``group`` and its nested groups (nurseries nest them)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _serve(node, log) -> None:
    """Run ``node`` until SIGINT or SIGTERM."""
    import signal

    import trio

    from node.logs import event

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            addrs = node.full_multiaddrs()
            print(f"mosaic node {node.peer_id} listening on {addrs[0]}", flush=True)
            for extra in addrs[1:]:
                print(f"also listening on {extra}", flush=True)
            async for signum in signals:
                event(log, "shutdown", signal=signal.Signals(signum).name, peer=node.peer_id)
                nursery.cancel_scope.cancel()
                break
