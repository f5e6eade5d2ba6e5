"""`python -m node eval`: measure a live network on benchmark tasks; `eval report DIR` writes the report.

    python -m node eval --http http://127.0.0.1:8080 --tasks ../shared/data/tasks \\
        --names gsm8k,arc_challenge --split test --limit 20 --experts all \\
        --strategies route,vote --baseline qwen --out runs/x
    python -m node eval report runs/x

Exit codes: 2 bad arguments or task files, 3 network unreachable, 4 some queries failed
(logged; a rerun retries them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import EXIT_FAILED, EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate experts, strategies and a baseline on benchmark tasks",
                       description="Send benchmark items to every selected expert and strategy, score and log "
                                   "each reply (resumable). `eval report DIR` writes the report from the logs.")
    p.add_argument("--http", metavar="URL", help="a node's OpenAI-compatible API, e.g. http://127.0.0.1:8080")
    p.add_argument("--peer", metavar="MULTIADDR", help="any peer over libp2p (/mosaic/query/1)")
    p.add_argument("--token", default=None, help="bearer token for --http")
    p.add_argument("--tasks", metavar="DIR",
                   help="folder of task files (default: $MOSAIC_TASKS_DIR, else shared/data/tasks beside the repo)")
    p.add_argument("--names", default=None, help="comma-separated task names (default: every task file)")
    p.add_argument("--split", default="test", choices=["dev", "test"])
    p.add_argument("--limit", default=None, metavar="N[,TASK=N...]",
                   help="first N items of each task; TASK=N sets one task's own, e.g. 20,gsm8k=10")
    p.add_argument("--experts", default="all", help="'all', 'none' or comma-separated expert model ids to pin")
    p.add_argument("--strategies", default="route", help="comma-separated strategies (mosaic/<name>), '' for none")
    p.add_argument("--baseline", default=None, metavar="MODEL", help="the monolithic baseline's model id")
    p.add_argument("--baseline-http", default=None, metavar="URL",
                   help="where the baseline is served, when it is not part of the evaluated network")
    p.add_argument(
        "--max-tokens", default=None, help="N, or TYPE=N,... (default multiple_choice=32,exact_match=128,f1_match=48)"
    )
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--task-tags", action="store_true",
                   help="send the task name as a capability tag with strategy queries (routing hint)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per query")
    p.add_argument("--concurrency", type=int, default=4, help="queries in flight at once")
    p.add_argument("--out", metavar="DIR", help="where logs go (a rerun resumes)")
    p.add_argument("--report", action="store_true", help="write the report after the run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--team-draws", type=int, default=20, help="report: random teams per team size")
    # `eval report DIR`: optional positionals rather than a sub-command, so `eval --http ...` needs none.
    p.add_argument("action", nargs="?", choices=["report"], help="'report DIR': write the report of a run")
    p.add_argument("dir", nargs="?", help="the --out folder of a run (for 'report')")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(args)
    return _run(args)


def _report(args: argparse.Namespace) -> int:
    """report.md, summary.json and PNG plots from the logs alone."""
    from node.eval.logs import LogError
    from node.eval.report import write_report

    folder = args.dir or args.out
    if not folder:
        print("error: eval report DIR: which run folder?", file=sys.stderr)
        return 2
    try:
        path = write_report(Path(folder), team_draws=args.team_draws)
    except LogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


# A fresh clone has no task files (they are never copied into the repository): say where they come from.
NO_TASK_FILES = (
    "no task files: eval reads benchmark task files (<task>.json, the MoCo format) from --tasks DIR, "
    "$MOSAIC_TASKS_DIR or shared/data/tasks beside the repository; get them from "
    "https://github.com/BunsenFeng/model_collaboration (model_collaboration/data/*.json) "
    "or write your own (format: docs/evaluation.md, \"Task files\")"
)


def _run(args: argparse.Namespace) -> int:
    if (args.http is None) == (args.peer is None):
        print("error: give exactly one of --http URL and --peer MULTIADDR", file=sys.stderr)
        return 2
    if not args.out:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    from node.eval.runner import PlanError, parse_max_tokens
    from node.evaluation import TaskFileError, find_tasks_dir, load_task_dir

    try:
        tasks_dir = args.tasks or os.environ.get("MOSAIC_TASKS_DIR") or find_tasks_dir()
        if tasks_dir is None:
            raise TaskFileError(NO_TASK_FILES)
        names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
        tasks = load_task_dir(tasks_dir, names)
        max_tokens = parse_max_tokens(args.max_tokens)
    except (TaskFileError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        args.limit, args.task_limits = parse_limit(args.limit)
    except ValueError as exc:
        print(f"error: --limit: {exc}", file=sys.stderr)
        return 2
    import trio

    return trio.run(_eval, args, tasks, max_tokens)


async def _eval(args: argparse.Namespace, tasks, max_tokens) -> int:
    import shlex
    from contextlib import AsyncExitStack

    from node.eval.client import NetworkUnavailable, open_client
    from node.eval.report import write_report
    from node.eval.runner import PlanError, run_eval, select_systems

    out = Path(args.out)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(open_client(http=args.http, peer=args.peer, token=args.token))
            baseline_client = None
            if args.baseline_http:
                baseline_client = await stack.enter_async_context(
                    open_client(http=args.baseline_http, token=args.token)
                )
            models = await client.models()
            baseline_models = await baseline_client.models() if baseline_client else None
            systems = select_systems(models, args.experts, strategies, args.baseline, baseline_models,
                                     check_strategies=args.http is not None)
            meta = {"command": "python -m node eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
                    "source": args.http or args.peer, "baseline_source": args.baseline_http}
            stats = await run_eval(client, tasks, systems, out, split=args.split, limit=args.limit,
                                   task_limits=args.task_limits,
                                   max_tokens=max_tokens, temperature=args.temperature, timeout=args.timeout,
                                   concurrency=args.concurrency, baseline_client=baseline_client,
                                   progress=not args.no_progress, task_tags=args.task_tags, meta=meta)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NetworkUnavailable as exc:
        print(f"error: {exc} (what was logged under {out} is kept; rerun to resume)", file=sys.stderr)
        return 3
    print(f"{stats.asked} answers logged ({stats.skipped} already logged, {stats.errors} failed) "
          f"in {stats.seconds:.1f} s under {out}", file=sys.stderr)
    if args.report:
        print(write_report(out))
    return EXIT_FAILED if stats.errors else EXIT_OK  # failed items are logged; a rerun retries them


def parse_limit(text: str | None) -> tuple[int | None, dict[str, int]]:
    """``"20"`` -> (20, {}); ``"20,gsm8k=10"`` -> (20, {"gsm8k": 10}); ``"gsm8k=10"`` -> (None, {...})."""
    limit: int | None = None
    per_task: dict[str, int] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, sep, value = part.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{part!r} is not N or TASK=N") from None
        if n < 1:
            raise ValueError(f"{part!r}: must be at least 1")
        if sep:
            per_task[name.strip()] = n
        else:
            limit = n
    return limit, per_task
