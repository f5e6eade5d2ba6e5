"""The competence simulation's table: each strategy vs the accuracy its experts' competence allows.

Scripted experts of known per-task accuracy and error correlation behind the real
coordinator (tests/quality/competence_sim.py says exactly how they behave), for
three competence profiles: one strong generalist among weak experts; specialists
with disjoint strengths; many weak independent voters.  Printed per profile: the
bounds (best single expert, per-task best expert, plurality vote of every
expert, oracle) and each strategy's accuracy and expert calls per query, as the
markdown table of docs/collaboration.md.

    .venv/bin/python benchmarks/competence.py              # 300 items per profile, ~1 min
    .venv/bin/python benchmarks/competence.py --items 90
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.quality.competence_sim import STRATEGIES, bounds, items, profiles, run_profile  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    questions = items(args.items, seed=args.seed)
    names = [p.name for p in profiles()]
    results = {}
    began = time.time()
    for profile in profiles():
        results[profile.name] = (bounds(profile.experts, questions),
                                 await run_profile(profile, questions, args.strategies))
    print(f"{args.items} items per profile (seed {args.seed}), {time.time() - began:.0f} s\n")
    for profile in profiles():
        print(f"- **{profile.name}**: {profile.summary}")
    print("\n| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, field in (("best single expert", "best_single"), ("per-task best expert", "per_task_best"),
                         ("plurality vote of all experts", "majority"), ("oracle (some expert right)", "oracle")):
        print(f"| *{label}* | " + " | ".join(f"*{getattr(results[n][0], field):.3f}*" for n in names) + " |")
    for strategy in args.strategies:
        cells = []
        for n in names:
            bound, run = results[n]
            achievable = max(bound.per_task_best, bound.majority)
            gap = run.accuracy[strategy] - achievable
            cells.append(f"{run.accuracy[strategy]:.3f} ({gap:+.3f}; {run.calls[strategy]:.1f} calls)")
        print(f"| {strategy} | " + " | ".join(cells) + " |")
    print("\n(gap: against the better of the per-task best expert and the plurality vote of all experts)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    trio.run(main, parser.parse_args())
