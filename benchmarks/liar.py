"""One lying expert among four (issue 12, attack 7): vote and moa accuracy against all-honest.

Four expert nodes and a coordinator on 127.0.0.1 in one process; the experts are
SmolLM2-135M copies (one per node).  In the second configuration the fourth
expert is replaced by a liar that always answers a wrong option (it is handed
the gold, the worst case).  Each strategy answers the same slice of test items
of a multiple-choice task; printed: accuracy per configuration and strategy, the
drop in points, and whether the coordinator's spot checks (at the production
rate, reputation.SPOT_CHECK_RATE, unless --rate) demoted the liar.

Usage: .venv/bin/python benchmarks/liar.py [--items 40] [--task arc_challenge] [--rate 0.05]
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

import protocol as p
from node.coordinator.reputation import SpotChecker
from node.coordinator.service import QueryService, coordinator_for
from node.evaluation import build_prompt, find_tasks_dir, load_tasks, score
from node.expert.service import ExpertService
from tests.attacks.test_lying_expert import WrongOptionExpert
from tests.cluster.harness import in_process_cluster

STRATEGIES = {"vote": {"k": 4}, "moa": {"k": 3}}


async def run_config(models: list, liar_items: list | None, items: list, rate: float) -> dict[str, object]:
    async with in_process_cluster() as cluster:
        # Long TTLs: four experts generating on a small CPU delay re-announcements.
        net = dict(record_ttl=600.0, announce_interval=30.0, dht_republish_interval=60.0, dht_sync_interval=30.0)
        coordinator = await cluster.add(0, services=[QueryService()], **net)
        for i, model in enumerate(models):
            await cluster.add(1 + i, services=[ExpertService(expert=model, threads=1)], **net)
        liar = None
        if liar_items is not None:
            wrong = {build_prompt(it): next(letter for letter, _ in it.choices if letter != it.gold) for it in liar_items}
            liar = await cluster.add(1 + len(models), services=[WrongOptionExpert(wrong)], **net)
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 4, timeout=60)
        engine = coordinator_for(coordinator)
        engine.spot_checks = SpotChecker(engine.reputation, rate=rate)
        out: dict[str, object] = {}
        for strategy, params in STRATEGIES.items():
            right = 0
            started = time.monotonic()
            for n, item in enumerate(items):
                request = p.QueryRequest(request_id=f"{strategy}-{n}", strategy=strategy, params=params,
                                         messages=(p.ChatMessage(role="user", content=build_prompt(item)),),
                                         sampling=p.SamplingParams(max_new_tokens=16), timeout_s=120.0, stream=False)
                text = ""
                try:
                    async with engine.answer(request) as events:  # spot checks run after each answer
                        async for event in events:
                            if isinstance(event, p.QueryResult):
                                text = event.text
                except Exception as exc:  # noqa: BLE001 - a failed query counts as wrong, and is shown
                    print(f"  {strategy} item {n}: {type(exc).__name__}: {exc}"[:160], flush=True)
                right += score(item, text).correct
            out[strategy] = (right / len(items), time.monotonic() - started)
        if liar is not None:
            out["liar"] = engine.reputation.snapshot(liar.peer_id)
            out["checks"] = engine.spot_checks.checks
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--task", default="arc_challenge")
    parser.add_argument("--rate", type=float, default=None, help="spot-check rate (default: SPOT_CHECK_RATE)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from node.coordinator.reputation import SPOT_CHECK_RATE
    from node.expert.loader import load_expert

    folder = find_tasks_dir(Path(__file__).resolve().parents[1])
    if folder is None:
        sys.exit("needs ../shared/data/tasks beside the repository")
    task = load_tasks(folder / f"{args.task}.json")
    items = list(task.items("test", args.items))
    rate = SPOT_CHECK_RATE if args.rate is None else args.rate
    models = [load_expert(None, device="cpu") for _ in range(4)]

    async def run() -> None:
        honest = await run_config(models, None, items, rate)
        lying = await run_config(models[:3], items, items, rate)
        print(f"\n{args.items} test items of {args.task}; 4 experts (SmolLM2-135M copies); spot-check rate {rate:g}")
        print(f"{'strategy':<8} {'all honest':>10} {'1 liar':>8} {'drop (pts)':>10} {'s honest':>9} {'s liar':>7}")
        for strategy in STRATEGIES:
            (a, ta), (b, tb) = honest[strategy], lying[strategy]
            print(f"{strategy:<8} {a:>10.1%} {b:>8.1%} {100 * (a - b):>10.1f} {ta:>9.0f} {tb:>7.0f}")
        print(f"liar after both strategies: {lying['liar']} ({lying['checks']} spot checks)")

    trio.run(run)


if __name__ == "__main__":
    main()
