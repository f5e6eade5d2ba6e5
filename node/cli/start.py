"""`python -m node start`: run a Mosaic node until SIGINT/SIGTERM.

Settings come from defaults < ``--config FILE`` (TOML) < ``MOSAIC_*`` env < flags.
The first stdout line is ``mosaic node <peer id> listening on <multiaddr>``
(the multi-process test harness parses it); logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .choices import CATALOG_KEYS

    p = sub.add_parser("start", help="run a node", description="Run a Mosaic node until SIGINT/SIGTERM.")
    p.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    p.add_argument("--data-dir", help="identity key and state (default ~/.mosaic or $MOSAIC_DATA_DIR)")
    p.add_argument("--name", help="human-readable node name in the capability record")
    p.add_argument("--description", help="what this node offers, in a sentence")
    p.add_argument("--tags", help="comma-separated capability tags, e.g. math,code")
    p.add_argument(
        "--listen", action="append", metavar="MULTIADDR",
        help="listen address (repeatable), e.g. /ip4/0.0.0.0/tcp/4001 "
        "(default /ip4/127.0.0.1/tcp/4001: this machine only)",
    )
    p.add_argument("--public", action="store_true",
                   help="listen on all interfaces (/ip4/0.0.0.0/tcp/4001) so other machines can join")
    p.add_argument(
        "--bootstrap", action="append", metavar="MULTIADDR", help="peer to join through, with /p2p/<id> (repeatable)"
    )
    p.add_argument("--mdns", action="store_true", default=None, help="discover peers on the LAN with mDNS")
    p.add_argument(
        "--trust",
        action="append",
        metavar="PEER_ID",
        help="private swarm: only these peers may connect, open streams or be listed (repeatable; default: open swarm)",
    )
    p.add_argument("--record-ttl", type=float, help="seconds a capability record stays valid")
    p.add_argument("--announce-interval", type=float, help="seconds between gossip re-announcements (0: off)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    nat = p.add_argument_group("NAT traversal (docs/operators.md)")
    nat.add_argument("--relay-service", action="store_true", default=None,
                     help="offer Circuit Relay v2 reservations to nodes behind NAT (a public node only)")
    nat.add_argument("--reachability", choices=["auto", "public", "private"],
                     help="skip AutoNAT and say whether peers can dial this node (default auto)")
    nat.add_argument("--relay-reservations", type=int, metavar="N",
                     help="relays an unreachable node reserves on (default 2)")
    nat.add_argument("--no-holepunch", action="store_true", help="never upgrade relayed connections (DCUtR)")
    expert = p.add_argument_group("expert")
    expert.add_argument("--no-expert", action="store_true", help="do not serve a model (coordinate only)")
    expert.add_argument("--model", help="base model: a catalog key (" + ", ".join(CATALOG_KEYS)
                        + "; default qwen2.5-1.5b, installed by scripts/install.sh; "
                        "`python -m node models` lists them), "
                        "an HF dir, a safetensors or GGUF path, or a CID")
    expert.add_argument(
        "--adapter", action="append", metavar="NAME=PATH", help="LoRA adapter (repeatable; PATH or CID)"
    )
    expert.add_argument("--device", help="auto, cpu, cuda, cuda:0, mps")
    expert.add_argument("--engine", choices=["auto", "llama.cpp", "torch"],
                        help="what runs the model: llama.cpp (GGUF on a CPU, fast), torch (HF dirs, GPUs, "
                        "training), auto (default: llama.cpp for GGUF bases on a CPU, else torch)")
    expert.add_argument("--threads", type=int, metavar="N",
                        help="torch threads for inference (default: free physical cores, logged at start)")
    expert.add_argument("--max-batch", type=int, metavar="N", help="generations decoded together (default 8)")
    expert.add_argument("--self-eval", metavar="TASKS", help="score the expert on these tasks' dev items at start "
                        "(comma-separated, e.g. gsm8k,arc_challenge) and put the scores in the record")
    expert.add_argument("--self-eval-limit", type=int, metavar="N", help="dev items per task (default 20)")
    expert.add_argument("--tasks-dir", help="where task files live (default $MOSAIC_TASKS_DIR or ../shared/data/tasks)")
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
    elif getattr(args, "public", False):
        from node.config import PUBLIC_LISTEN

        config.net.listen = [PUBLIC_LISTEN]
    if args.bootstrap:
        config.net.bootstrap = list(args.bootstrap)
    if args.mdns:
        config.net.mdns = True
    if getattr(args, "trust", None):
        config.net.trusted_peers = list(args.trust)
    if args.record_ttl is not None:
        config.net.record_ttl = args.record_ttl
    if args.announce_interval is not None:
        config.net.announce_interval = args.announce_interval
    if getattr(args, "relay_service", None):
        config.net.relay_service = True
    if getattr(args, "reachability", None):
        config.net.reachability = args.reachability
    if getattr(args, "relay_reservations", None) is not None:
        config.net.relay_reservations = args.relay_reservations
    if getattr(args, "no_holepunch", False):
        config.net.holepunch = False
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
    if getattr(args, "engine", None):
        config.expert.engine = args.engine
    if args.threads is not None:
        config.expert.threads = args.threads
    if args.max_batch is not None:
        config.expert.max_batch = args.max_batch
    if args.self_eval:
        config.expert.self_eval = [t.strip() for t in args.self_eval.split(",") if t.strip()]
    if args.self_eval_limit is not None:
        config.expert.self_eval_limit = args.self_eval_limit
    if args.tasks_dir:
        config.expert.tasks_dir = args.tasks_dir
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
    from node.cli import EXIT_IN_USE, EXIT_USAGE
    from node.config import ConfigError
    from node.local_node import DataDirBusy, DataDirLock
    from node.net.ports import PortInUse

    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from node import logs

    logs.setup(config.log_level)
    logs.show_progress(logs.progress_wanted())  # e.g. the first start's model conversion, on a terminal
    # Everything that can clash with another node is checked before the model loads
    # (a clash found after a 30 s load used to end in a 150-line traceback).
    lock = DataDirLock(config.data_path)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except OSError as exc:  # e.g. a data dir we may not create
        print(f"error: data dir {config.data_path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            for note in settle_ports(config, listen_given=bool(args.listen), http_given=bool(args.http)):
                print(f"note: {note}", file=sys.stderr, flush=True)
        except PortInUse as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_IN_USE
        import trio

        code, interrupted_start = trio.run(_main, config, lock)
    finally:
        lock.release()
    if interrupted_start:
        # The model load is still running in an abandoned worker thread.  Interpreter
        # shutdown would wait for it to let go of the GIL (8 s measured mid-conversion):
        # everything of ours is closed and flushed, so leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def settle_ports(config, *, listen_given: bool, http_given: bool) -> list[str]:
    """Check every port the node will listen on; return notes about changed defaults.

    A port the user chose (flag, env, TOML) that is taken raises ``PortInUse``.  A
    *default* port that is taken (a second node on this machine) moves to the next
    free one, and the note says so: the README's second-node command just works.
    """
    from node.config import PUBLIC_LISTEN, HttpConfig, NetConfig
    from node.net.ports import PortInUse, check_listen_addrs, next_free_port, tcp_endpoint, tcp_port_free, with_port

    notes = []
    if not listen_given and config.net.listen in (NetConfig().listen, [PUBLIC_LISTEN]):
        moved = []
        for addr in config.net.listen:
            host, port = tcp_endpoint(addr) or ("", 0)
            if port and not tcp_port_free(host, port):
                free = next_free_port(host, port + 1)
                notes.append(f"libp2p port {port} is in use (another node?); listening on {free} instead")
                addr = with_port(addr, free)
            moved.append(addr)
        config.net.listen = moved
    check_listen_addrs(config.net.listen)
    if config.http.enabled:
        host, _, text = config.http.listen.rpartition(":")
        port = int(text)
        if port and not tcp_port_free(host, port):
            if http_given or config.http.listen != HttpConfig().listen:
                raise PortInUse(f"HTTP address {config.http.listen} is already in use, probably by another node; "
                                f"pass --http {host}:PORT (port 0 picks a free one) or --no-http")
            free = next_free_port(host, port + 1)
            notes.append(f"HTTP port {port} is in use (another node?); serving HTTP on {host}:{free} instead")
            config.http.listen = f"{host}:{free}"
    return notes


async def _main(config, lock) -> tuple[int, bool]:
    """Run the node; returns ``(exit code, interrupted during start-up)``."""
    from node.app import Node
    from node.cli import EXIT_FAILED, EXIT_IN_USE, EXIT_OK, EXIT_USAGE
    from node.expert.errors import ModelLoadError, WeightsUnavailable
    from node.logs import event, get_logger
    from node.net.keys import IdentityFileError
    from node.net.ports import PortInUse
    from node.services import default_services

    log = get_logger("cli.start")
    try:
        node = Node(config, services=default_services(config))
    except IdentityFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE, False
    code = EXIT_OK
    interrupted_start = False
    try:
        interrupted_start = await _serve(node, lock, log)
    except* ModelLoadError as group:
        # A bad --model/--adapter is the operator's input: say which and why, no traceback.
        # Weights named by CID that no peer could supply are a failed fetch (1, as `fetch` exits).
        errors = list(_leaves(group))
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        code = EXIT_FAILED if all(isinstance(e, WeightsUnavailable) for e in errors) else EXIT_USAGE
    except* PortInUse as group:  # taken between our check and the listen
        for error in _leaves(group):
            print(f"error: {error}", file=sys.stderr)
        code = EXIT_IN_USE
    if code == EXIT_OK:
        event(log, "stopped", peer=node.peer_id)
    return code, interrupted_start


def _leaves(group: BaseExceptionGroup):
    """The exceptions inside ``group`` and its nested groups (nurseries nest them)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


# Seconds a clean stop may take (goodbye to peers, services closing) before it is forced.
STOP_TIMEOUT = 5.0


async def _serve(node, lock, log) -> bool:
    """Run ``node`` until SIGINT or SIGTERM; True if a signal cut start-up short.

    Signals are watched from the first moment, not only once the node is up: the
    model load (22 s on a first start) runs in a worker thread that a signal
    abandons, so Ctrl-C stops start-up at once.  Once up, a signal stops the node
    cleanly (goodbye to its peers); a second signal, or ``STOP_TIMEOUT``, forces it.
    """
    import signal

    import trio

    from node.local_node import RunningNode
    from node.logs import event
    from node.net.reach import for_others_first, reach_of

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        interrupted = False
        async with trio.open_nursery() as nursery:
            started = trio.Event()

            async def watch_signals() -> None:
                nonlocal interrupted
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not started.is_set():
                        interrupted = True
                        event(log, "shutdown", signal=name, peer=node.peer_id, phase="during start-up")
                        nursery.cancel_scope.cancel()
                        return
                    event(log, "shutdown", signal=name, peer=node.peer_id)
                    node.stop()
                    nursery.cancel_scope.deadline = trio.current_time() + STOP_TIMEOUT
                    async for _ in signals:  # a second Ctrl-C: stop now
                        nursery.cancel_scope.cancel()
                        return

            async def run_node(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                await node.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped cleanly: the signal watcher is done too

            nursery.start_soon(watch_signals)
            await nursery.start(run_node)
            started.set()
            addrs = for_others_first(node.full_multiaddrs())
            print(f"mosaic node {node.peer_id} listening on {addrs[0]}", flush=True)
            for extra in addrs[1:]:
                reach = reach_of(extra)
                print(f"also listening on {extra}" + (f" (reachable from {reach})" if reach else ""), flush=True)
            print(f"note: {reach_note(addrs)}", file=sys.stderr, flush=True)
            http_url = _http_url(node)
            if http_url:
                print(f"HTTP API on {http_url} (OpenAI-compatible, /v1)", flush=True)
            control = _control(node)
            lock.describe(RunningNode(
                pid=os.getpid(), peer_id=node.peer_id, command="start", multiaddrs=addrs, http_url=http_url,
                control=control.address if control else None, token=control.token if control else "",
            ))
    return interrupted


def reach_note(addrs: list[str]) -> str:
    """One line on who can join the node at its first address (printed on stderr at start)."""
    from node.net.reach import THIS_MACHINE, reach_of

    reach = reach_of(addrs[0])
    if reach == THIS_MACHINE:
        return ("listening on loopback: only nodes on this machine can join; pass --public (all interfaces) "
                "or --listen MULTIADDR to let other machines connect")
    if reach is None:
        return f"other nodes join with --bootstrap {addrs[0]}"
    return f"{addrs[0]} is reachable from {reach}: other nodes join with --bootstrap {addrs[0]}"


def _http_url(node) -> str | None:
    from node.api.service import HttpService

    service = node.service(HttpService)
    return service.url if service is not None else None


def _control(node):
    from node.control import ControlService

    return node.service(ControlService)
