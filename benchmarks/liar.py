"""One lying expert among four (issue 12, attack 7): vote and moa accuracy against all-honest.

Four expert nodes and a coordinator on 127.0.0.1 in one process; the experts are
SmolLM2-135M copies (one per node).  In the lying configurations the fourth
expert is replaced by a liar that always answers a wrong option, on the test
items, on the spot-check items and when it aggregates (it is handed the gold, the
worst case): ``random``, a wrong letter chosen per question; ``first``, the first
wrong letter (which mostly coincides with SmolLM2-135M's habit of answering "A").
Each strategy answers the same slice of test items of a multiple-choice task on a
fresh coordinator (no evidence carried over); printed: accuracy per configuration
and strategy, the drop in points, after how many queries the liar was demoted
(spot checks at the production rate, reputation.SPOT_CHECK_RATE, unless --rate;
claims: none; consensus of the fan-outs) and why.

Usage: .venv/bin/python benchmarks/liar.py [--items 40] [--task arc_challenge] [--rate 0.05]
       [--liars random,first] [--strategies vote,moa]
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
from node.coordinator.reputation import Reputation, SpotChecker, load_check_items
from node.coordinator.service import QueryService
from node.evaluation import build_prompt, find_tasks_dir, load_tasks, score
from node.expert.serve.service import ExpertService
from tests.attacks.test_lying_expert import WrongOptionExpert, wrong_options
from tests.cluster.harness import in_process_cluster

STRATEGIES = {"vote": {"k": 4}, "moa": {"k": 3}}


async def run_config(models: list, wrong: dict[str, str] | None, items: list, rate: float) -> dict[str, object]:
    async with in_process_cluster() as cluster:
        # Long TTLs: four experts generating on a small CPU delay re-announcements.
        net = dict(record_ttl=600.0, announce_interval=30.0, dht_republish_interval=60.0, dht_sync_interval=30.0)
        coordinator = await cluster.add(0, services=[QueryService()], **net)
        for i, model in enumerate(models):
            await cluster.add(1 + i, services=[ExpertService(expert=model, threads=1)], **net)
        liar = None
        if wrong is not None:
            liar = await cluster.add(1 + len(models), services=[WrongOptionExpert(wrong)], **net)
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 4, timeout=60)
        engine = coordinator.service(QueryService).coordinator
        out: dict[str, object] = {}
        for strategy, params in STRATEGIES.items():
            engine.reputation = Reputation()  # each strategy starts without evidence
            engine.spot_checks = SpotChecker(engine.reputation, rate=rate)
            right, demoted_at = 0, None
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
                if liar is not None and demoted_at is None and engine.reputation.demoted(liar.peer_id):
                    demoted_at = n + 1
            seconds = time.monotonic() - started
            snapshot = engine.reputation.snapshot(liar.peer_id) if liar is not None else {}
            out[strategy] = (right / len(items), seconds, demoted_at, snapshot, engine.spot_checks.checks)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--task", default="arc_challenge")
    parser.add_argument("--rate", type=float, default=None, help="spot-check rate (default: SPOT_CHECK_RATE)")
    parser.add_argument("--liars", default="random,first", help="liar kinds to run: random, first")
    parser.add_argument("--strategies", default="vote,moa", help="strategies to run: vote, moa")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from node.coordinator.reputation import SPOT_CHECK_RATE
    from node.expert.model.loader import load_expert

    folder = find_tasks_dir(Path(__file__).resolve().parents[1])
    if folder is None:
        sys.exit("needs ../shared/data/tasks beside the repository")
    task = load_tasks(folder / f"{args.task}.json")
    items = list(task.items("test", args.items))
    rate = SPOT_CHECK_RATE if args.rate is None else args.rate
    for name in set(STRATEGIES) - set(args.strategies.split(",")):
        del STRATEGIES[name]
    models = [load_expert(None, device="cpu") for _ in range(4)]
    liars = [name for name in args.liars.split(",") if name]
    checks = load_check_items()  # the liar lies on spot-check items too

    async def run() -> None:
        honest = await run_config(models, None, items, rate)
        lying = {name: await run_config(models[:3], wrong_options(items + checks, name), items, rate)
                 for name in liars}
        print(f"\n{args.items} test items of {args.task}; 4 experts (SmolLM2-135M copies); spot-check rate {rate:g}")
        print(f"{'strategy':<8} {'liar':<7} {'all honest':>10} {'1 liar':>8} {'drop (pts)':>10} "
              f"{'demoted at query':>16} {'s honest':>9} {'s liar':>7}")
        for strategy in STRATEGIES:
            a, ta = honest[strategy][:2]
            for name, result in lying.items():
                b, tb, at, snapshot, checks_run = result[strategy]
                print(f"{strategy:<8} {name:<7} {a:>10.1%} {b:>8.1%} {100 * (a - b):>10.1f} "
                      f"{str(at or 'never'):>16} {ta:>9.0f} {tb:>7.0f}")
                print(f"    liar: {snapshot} ({checks_run} spot checks)")

    trio.run(run)


if __name__ == "__main__":
    main()
