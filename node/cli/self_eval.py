"""`python -m node self-eval --tasks arc_challenge,truthfulqa [--limit N]`: score the running node's expert now.

Talks to the node running on the data dir through its loopback control endpoint
(node/control.py): the node asks its own expert the first N dev items of each task
(the base model and every adapter it serves), puts the scores in its capability
record, re-signs and re-announces it, and this command prints the scores.  No
second host is started: the record is signed by the node that serves the expert.
"""

from __future__ import annotations

import argparse
import sys

from . import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from .storage_options import add_common, build_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("self-eval", help="score the running node's expert on task files; the scores go in its record",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", required=True, metavar="TASKS",
                   help="comma-separated task names, e.g. arc_challenge,gsm8k")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="dev items per task (default 20)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="new tokens per reply (default: 16 multiple choice, 64 exact match, 32 F1); "
                   "the record says which, and a spot check asks with the same")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from node.config import ConfigError
    from node.local_node import SELF_EVAL_TIMEOUT, ControlError, ask, running_node

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        print("error: --tasks: name at least one task", file=sys.stderr)
        return EXIT_USAGE
    if args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.max_tokens is not None and args.max_tokens < 1:
        print("error: --max-tokens must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        data_dir = build_config(args).data_path
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    node = running_node(data_dir)
    if node is None:
        print(f"error: no node is running on data dir {data_dir}; start one with `python -m node start` "
              "(or pass --data-dir DIR)", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"evaluating on node {node.peer_id} (pid {node.pid}): {', '.join(tasks)}, {args.limit} items each ...",
          file=sys.stderr, flush=True)
    try:
        extra = {"max_tokens": args.max_tokens} if args.max_tokens else {}
        answer = ask(node, "self_eval", timeout=SELF_EVAL_TIMEOUT, tasks=tasks, limit=args.limit, **extra)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        # The node answered but refused (unknown task, no expert): the request was wrong, not the reach.
        return EXIT_FAILED if "refused" in str(exc) else EXIT_UNREACHABLE
    scores = answer.get("evals")
    if not isinstance(scores, list):
        print(f"error: the running node (pid {node.pid}) answered without scores", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"peer_id": answer.get("peer_id"), "seq": answer.get("seq"), "evals": scores}, indent=2))
        return EXIT_OK
    print(f"{'TASK':<16} {'ADAPTER':<16} {'SPLIT':<6} {'N':>4} {'ACCURACY':>8}")
    for s in scores:
        print(f"{s['task']:<16} {s.get('adapter') or '(base)':<16} {s['split']:<6} {s['n']:>4} {s['accuracy']:>8.3f}")
    print(f"signed and announced in record seq {answer.get('seq')}", file=sys.stderr)
    return EXIT_OK
