"""Are the answers worth asking for?  Every strategy vs each single member, on the easy question set.

A real network on loopback (tests/quality/network.py: node 0 coordinates, every
node serves SmolLM2-135M-Instruct on the torch engine), the easy questions
(tests/quality/easy_set.py; ``--dev TASK=N`` adds dev items of the shared task
files), every strategy of the coordinator's table (what ``/v1/models`` lists as
``mosaic/<name>``) and each member pinned, all with the HTTP API's default
request settings.  Printed: accuracy and mean seconds per question per system,
and the paired verdict against the best member of the same run
(tests/quality/gate.py).

    MOSAIC_TASKS_DIR=/work/shared/data/tasks .venv/bin/python benchmarks/answers.py --items 40
    .venv/bin/python benchmarks/answers.py --items 10 --strategies vote moa refine --nodes 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from node.coordinator.strategies import STRATEGIES  # noqa: E402
from tests.quality.easy_set import dev_items, easy_items  # noqa: E402
from tests.quality.gate import ask_all, compare  # noqa: E402
from tests.quality.network import smol_network  # noqa: E402

# Strategies a SmolLM2-only network cannot run: merge needs peers' LoRA adapters of this node's base.
NEEDS_ADAPTERS = ("merge",)


async def main(args: argparse.Namespace) -> None:
    import torch

    from node.expert.model.loader import load_expert

    torch.set_num_threads(args.threads)
    items = easy_items(args.items)
    for spec in args.dev:
        task, _, n = spec.partition("=")
        items += dev_items([task], int(n or 10))
    cache = Path(os.environ.get("MOSAIC_CACHE_DIR", Path.home() / ".cache" / "mosaic"))
    expert = load_expert(None, cache_dir=cache, device="cpu")
    strategies = args.strategies or [s for s in STRATEGIES if s not in NEEDS_ADAPTERS]
    began = time.time()
    async with smol_network([expert] * args.nodes, threshold=args.threshold) as network:
        systems = list(network.team.members) + [f"mosaic/{s}" for s in strategies]
        outcomes = await ask_all(network.host, network.peer, items, systems, max_tokens=args.max_tokens,
                                 log=args.verbose)
    members = {m: outcomes[m] for m in network.team.members}
    print(f"\n{network.team.name}, {len(items)} items, max_tokens {args.max_tokens}, API default sampling; "
          f"{time.time() - began:.0f} s in all\n")
    print("| system | right | accuracy | s / question | vs best member (b/c, p) | verdict |")
    print("|---|---|---|---|---|---|")
    failed = []
    for system in systems:
        rows = outcomes[system]
        right = sum(o.right for o in rows)
        seconds = sum(o.seconds for o in rows) / len(rows)
        if system in members:
            print(f"| {system} (member) | {right}/{len(rows)} | {right / len(rows):.3f} | {seconds:.1f} | | |")
            continue
        verdict = compare(system, rows, members, items, threshold=network.team.threshold)
        mark = "WORSE" if verdict.worse else ("below floor" if verdict.below_threshold else "ok")
        if mark != "ok":
            failed.append(verdict)
        print(f"| {system} | {right}/{len(rows)} | {verdict.accuracy:.3f} | {seconds:.1f} | "
              f"{verdict.member_only}/{verdict.system_only}, p={verdict.p_value:.3f} | {mark} |")
    print(f"\nfloor of this team: {network.team.threshold:.2f}; best member: "
          f"{max(members, key=lambda m: sum(o.right for o in members[m]))}")
    for verdict in failed:
        print(f"\n{verdict.system}: " + "\n  ".join(verdict.examples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--dev", nargs="*", default=[], metavar="TASK=N", help="dev items of shared task files")
    parser.add_argument("--nodes", type=int, default=3, help="expert nodes (the quickstart has 3)")
    parser.add_argument("--strategies", nargs="*", default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.4, help="the team's floor (SmolLM2: 0.4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    logging.disable(logging.WARNING)
    trio.run(main, parser.parse_args())
