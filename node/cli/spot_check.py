"""`python -m node spot-check --peer MULTIADDR --task gsm8k --n 5`: test a peer's claimed score.

Fetches the peer's signed record, finds its self-evaluation claim for the task (and
``--adapter``), re-asks ``--n`` of the claimed items and prints the observed accuracy,
the claimed one and a binomial p-value (low: the claim is hard to believe).  Exit 0 when
the check ran, 1 when it could not (no claim, different task file, peer unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spot-check", help="re-ask a peer some items of its claimed self-evaluation",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", required=True, metavar="MULTIADDR", help="the peer: /ip4/.../tcp/.../p2p/<peer id>")
    p.add_argument("--task", required=True, help="task name, e.g. gsm8k")
    p.add_argument("--adapter", default=None, help="the adapter whose claim to check (default: the base model)")
    p.add_argument("--n", type=int, default=5, help="items to re-ask (default 5)")
    p.add_argument("--seed", type=int, default=None, help="which items (default: random)")
    p.add_argument("--tasks-dir", default=None, help="task files (default $MOSAIC_TASKS_DIR or ../shared/data/tasks)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole check")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import trio

    from node import logs

    logs.setup("warning", libp2p_level="critical")
    if args.n < 1:
        print("error: --n must be at least 1", file=sys.stderr)
        return 2
    try:
        return trio.run(_main, args)
    except KeyboardInterrupt:
        return 130


async def _main(args: argparse.Namespace) -> int:
    import trio

    from node.expert.remote.spot_check import SpotCheckError, spot_check, to_dict
    from node.expert.serve.local import ExpertError
    from node.expert.serve.self_eval import SelfEvalError
    from node.net.discovery import DialError, dial
    from node.net.exchange import ExchangeRefused, fetch_table
    from node.net.host import build_host, listen_multiaddrs
    from node.net.keys import libp2p_key_pair
    from node.net.streams import StreamClosed
    from node.registry import Registry
    from protocol import Identity, ProtocolError

    listen = ["/ip4/127.0.0.1/tcp/0"]
    host = build_host(libp2p_key_pair(Identity.generate()), listen)
    error, result = None, None
    async with host.run(listen_addrs=listen_multiaddrs(listen)):
        try:
            with trio.fail_after(args.timeout):
                peer_id = await dial(host, args.peer, timeout=30)
                registry = Registry()
                for signed in await fetch_table(host, peer_id, None, timeout=30):
                    registry.offer(signed, source="stream")
                record = registry.get(peer_id)
                if record is None:
                    raise SpotCheckError(f"{args.peer} sent no valid signed record of its own")
                result = await spot_check(host, record, args.task, n=args.n, adapter=args.adapter,
                                          tasks_dir=args.tasks_dir, seed=args.seed)
        except (DialError, StreamClosed, ExchangeRefused, ProtocolError, SpotCheckError, SelfEvalError,
                ExpertError) as exc:
            error = str(exc)
        except trio.TooSlowError:
            error = f"no answer within {args.timeout:.0f}s"
    if error is not None or result is None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(to_dict(result), indent=2))
    else:
        print(f"{result.task}/{result.adapter or 'base'}: claimed {result.claimed:.3f} on {result.claimed_n} items; "
              f"re-asked {result.asked}: {result.correct} correct ({result.observed:.3f}); "
              f"p={result.p_value:.3f} under the claim")
    return 0
