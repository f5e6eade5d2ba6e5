"""Are the answers worth asking for?  Every strategy vs each single member, on the easy question set.

A real network on loopback (tests/quality/network.py: node 0 coordinates, every
node serves the same model: by default the README's default node, the catalog's
default model on the llama.cpp engine), the easy questions
(tests/quality/easy_set.py; ``--dev TASK=N`` adds dev items of the shared task
files), every strategy of the coordinator's table (what ``/v1/models`` lists as
``mosaic/<name>``) and each member pinned, all with the HTTP API's default
request settings.  Printed: accuracy and mean seconds per question per system,
and the paired verdict against the best member of the same run
(tests/quality/gate.py), with the team's floor (0.85 for the default team).

    .venv/bin/python benchmarks/answers.py --items 40              # the default network (3 nodes)
    .venv/bin/python benchmarks/answers.py --model smollm2-135m --engine torch --items 10 --nodes 2
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
from node.expert.model.catalog import default_key  # noqa: E402
from tests.quality.easy_set import dev_items, easy_items  # noqa: E402
from tests.quality.gate import ask_all, compare  # noqa: E402
from tests.quality.network import SMOL_THRESHOLD, TEAM_FLOORS, team_network  # noqa: E402

# Strategies a SmolLM2-only network cannot run: merge needs peers' LoRA adapters of this node's base.
NEEDS_ADAPTERS = ("merge",)


def load(model: str, engine: str, cache: Path, threads: int) -> object:
    """The model every node serves, loaded once (the nodes share it, as processes share a mmapped GGUF)."""
    if engine == "llama.cpp":
        from node.expert.serve.llamacpp.model import load_llama_expert

        return load_llama_expert(model, cache_dir=cache)
    import torch

    from node.expert.model.loader import load_expert

    torch.set_num_threads(threads)
    return load_expert(model, cache_dir=cache, device="cpu")


async def main(args: argparse.Namespace) -> None:
    items = easy_items(args.start + args.items)[args.start:]
    for spec in args.dev:
        task, _, n = spec.partition("=")
        items += dev_items([task], int(n or 10))
    cache = Path(os.environ.get("MOSAIC_CACHE_DIR", Path.home() / ".cache" / "mosaic"))
    model = args.model or default_key()
    expert = load(model, args.engine, cache, args.threads)
    threshold = args.threshold if args.threshold is not None else TEAM_FLOORS.get(model, SMOL_THRESHOLD)
    strategies = args.strategies or [s for s in STRATEGIES if s not in NEEDS_ADAPTERS]
    began = time.time()
    name = f"{getattr(expert, 'model_id', model)} ({args.engine})"
    async with team_network([expert] * args.nodes, name=name, threshold=threshold) as network:
        asked_members = network.team.members[: args.members or None]
        systems = list(asked_members) + [f"mosaic/{s}" for s in strategies]
        stop_at = time.monotonic() + args.budget_s if args.budget_s else None
        outcomes = await ask_all(network.host, network.peer, items, systems, max_tokens=args.max_tokens,
                                 log=args.verbose, stop_at=stop_at, redial=network.redial)
    items = items[: len(outcomes[systems[0]])]
    members = {m: outcomes[m] for m in asked_members}
    print(f"\n{network.team.name}, {len(items)} items from #{args.start}, max_tokens {args.max_tokens}, "
          f"API default sampling; {time.time() - began:.0f} s in all\n")
    print("| system | right | accuracy | s / question | vs best member (b/c, p) | verdict |")
    print("|---|---|---|---|---|---|")
    failing = []
    for system in systems:
        rows = outcomes[system]
        right = sum(o.right for o in rows)
        seconds = sum(o.seconds for o in rows) / len(rows)
        errors = sum(o.failed for o in rows)
        count = f"{right}/{len(rows)}" + (f" ({errors} failed)" if errors else "")
        if system in members:
            print(f"| {system} (member) | {count} | {right / len(rows):.3f} | {seconds:.1f} | | |")
            continue
        verdict = compare(system, rows, members, items, threshold=network.team.threshold)
        mark = "WORSE" if verdict.worse else ("below floor" if verdict.below_threshold else "ok")
        if mark != "ok":
            failing.append(verdict)
        print(f"| {system} | {count} | {verdict.accuracy:.3f} | {seconds:.1f} | "
              f"{verdict.member_only}/{verdict.system_only}, p={verdict.p_value:.3f} | {mark} |")
    print(f"\nfloor of this team: {network.team.threshold:.2f}; best member: "
          f"{max(members, key=lambda m: sum(o.right for o in members[m]))}")
    for verdict in failing:
        print(f"\n{verdict.system}: " + "\n  ".join(verdict.examples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--start", type=int, default=0,
                        help="skip the set's first N items (a long run in parts: --start 20 --items 20)")
    parser.add_argument("--dev", nargs="*", default=[], metavar="TASK=N", help="dev items of shared task files")
    parser.add_argument("--nodes", type=int, default=3, help="expert nodes (the quickstart has 3)")
    parser.add_argument("--strategies", nargs="*", default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default=None, help="catalog key every node serves (default: the node's default)")
    parser.add_argument("--engine", choices=("llama.cpp", "torch"), default="llama.cpp")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the team's floor (default: 0.85 for Qwen teams, 0.4 for SmolLM2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (llama.cpp: each node's worker)")
    parser.add_argument("--members", type=int, default=0,
                        help="ask only the first N members (0: all; the nodes serve one model greedily, so "
                             "their answers are the same)")
    parser.add_argument("--budget-s", type=float, default=0,
                        help="start no item after this many seconds (the table covers the items asked)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    logging.disable(logging.WARNING)
    trio.run(main, parser.parse_args())
